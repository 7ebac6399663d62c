"""Make the inputs of examples/real_models.toml: a folder of 224 px images and masks and two
classifiers saved the way users keep them, with random weights (nothing is downloaded):

- ``OUT/data``: the bird benchmark at 224 px (``--images`` images, 4 classes);
- ``OUT/vit-b16``: a transformers ViT-B/16 image classifier (``save_pretrained``: config.json,
  model.safetensors, preprocessor_config.json), its classes named in ``id2label``;
- ``OUT/resnet50.safetensors``: timm's ResNet-50 state dict, its class names in the file's
  metadata.

Usage:
    python examples/real_models.py runs/real-models [--images 64]
    concilium run examples/real_models.toml --out runs/real-models/run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import timm
import torch
from safetensors.torch import save_file
from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

from concilium.data.folder import write_folder
from concilium.data.synthetic import SynthConfig, generate

SIZE = 224


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out: Path = args.out
    data = generate(SynthConfig(n=args.images, size=SIZE, num_classes=4, seed=args.seed))
    write_folder(data, out / "data", overwrite=True)
    names = list(data.class_names)
    torch.manual_seed(args.seed)  # a script: the weights are random and seeded
    vit = ViTForImageClassification(ViTConfig(  # ViTConfig's defaults are ViT-B/16 at 224 px
        num_labels=len(names), id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)}))
    vit.save_pretrained(out / "vit-b16")
    ViTImageProcessor(size={"height": SIZE, "width": SIZE}).save_pretrained(out / "vit-b16")
    resnet = timm.create_model("resnet50", pretrained=False, num_classes=len(names))
    save_file(resnet.state_dict(), str(out / "resnet50.safetensors"),
              metadata={"class_names": json.dumps(names)})
    print(f"wrote {out}/data ({len(data)} images, {SIZE} px, classes {names}), "
          f"{out}/vit-b16, {out}/resnet50.safetensors")
    print("next: concilium run examples/real_models.toml --out " + str(out / "run"))


if __name__ == "__main__":
    main()
