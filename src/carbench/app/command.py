"""The ``carbench`` command; ``carbench app`` serves a page to try the trained models (docs/app.md).

    carbench app [--models models] [--crops data/crops] [--eval metrics/eval] [--host 127.0.0.1] [--port 7860]
                 [--device auto|cpu|cuda]

It loads every model under ``--models`` once, prints the page's address and serves until Ctrl-C. Offline by design:
Gradio's analytics and version check are switched off before it is imported, and no share link is made.
"""
from __future__ import annotations

import argparse
import threading
from typing import Optional, Sequence

from ..core import cli, runtime
from ..core.errors import UserError

DEFAULT_PORT = 7860


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="carbench", description="carbench's commands.")
    sub = p.add_subparsers(dest="command", required=True)
    app = sub.add_parser("app", help="serve a page to try the trained models in a browser",
                         description="Serve a page to try the trained models: upload a photo (and optionally its "
                                     "car box) to see each experiment's top-5 side by side, a retrieval "
                                     "experiment's nearest gallery crops, and each experiment's test mistakes.")
    app.add_argument("--models", default="models", help="models root (default: models)")
    app.add_argument("--crops", default="data/crops", help="crop store: crop geometry, gallery and test crops "
                     "(default: data/crops)")
    app.add_argument("--eval", default="metrics/eval", help="evaluate stage's tables, for the test mistakes "
                     "(default: metrics/eval)")
    app.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine "
                     "only; 0.0.0.0 for the local network)")
    app.add_argument("--port", type=int, default=DEFAULT_PORT,
                     help=f"port (default: {DEFAULT_PORT}; 0: the first free one from {DEFAULT_PORT} on)")
    app.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    return p


def serve(args: argparse.Namespace) -> None:
    """Load the models, start the page, print its address, block until interrupted."""
    from .page import CSS, build
    from .showroom import Showroom

    showroom = Showroom(args.models, args.crops, args.eval, args.device)
    page = build(showroom)
    port = args.port or None
    try:
        page.launch(server_name=args.host, server_port=port, share=False, quiet=True, prevent_thread_lock=True,
                    inbrowser=False, show_error=False, css=CSS)
    except OSError as exc:   # the port is taken
        raise UserError(f"cannot serve on {args.host}:{args.port}: {exc}; pass another --port") from None
    print(f"carbench app: {len(showroom.names)} experiments at {page.local_url} (Ctrl-C stops it)", flush=True)
    try:
        threading.Event().wait()
    finally:
        page.close()


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console entry point ``carbench``."""
    args = build_parser().parse_args(argv)

    def _run() -> None:
        runtime.configure(seed=0)
        try:
            serve(args)
        except runtime.DeviceError as exc:
            raise UserError(str(exc)) from None

    cli.run_command(_run)


if __name__ == "__main__":
    main()
