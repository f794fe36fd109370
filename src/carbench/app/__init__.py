"""``carbench app``: a web page to try the trained models (:mod:`.showroom` the models and what the page shows,
:mod:`.page` its Gradio layout, :mod:`.command` the command line)."""
