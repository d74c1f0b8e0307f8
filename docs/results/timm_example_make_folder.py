"""A tiny image folder for docs/timm.md's worked example: 100 training and 20 validation Fashion-MNIST images
of each class, as PNGs in fmnist_folder/{train,validation}/CLASS/. Run from any folder:
    PYTHONPATH=src python docs/results/timm_example_make_folder.py
"""
from pathlib import Path
from PIL import Image
from nondeep.data import load_arrays

for split, source, per_class in (("train", "train", 100), ("validation", "test", 20)):
    images, labels, classes = load_arrays("fashion_mnist", source)
    for c, name in enumerate(classes):
        folder = Path("fmnist_folder", split, name.replace("/", "-").replace(" ", "_"))
        folder.mkdir(parents=True, exist_ok=True)
        for i, index in enumerate((labels == c).nonzero().flatten()[:per_class].tolist()):
            Image.fromarray(images[index, 0].numpy()).save(folder / f"{i:03d}.png")
