"""Write docs/phantom-gallery.png: phantom slices beside the real slices of ../shared/realct.

Top rows: one phantom slice per hemorrhage subtype (the slice where its mask is largest) and a
normal slice, brain window 40/80, masks outlined (colour per subtype); then the four real CQ500
slices rendered the same way with their BHX boxes outlined, and phantoms from the ``shifted``
preset. Dev-only (needs Pillow). Usage: ``python scripts/gallery.py [--out PATH] [--seed N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ichrt.runtime.contract import LABELS
from ichrt.runtime.pictures import window_gray8
from ichrt.runtime.rsna_layout import read_boxes_csv
from ichrt.runtime.synth import PhantomConfig, generate_study

TILE = 320
COLOURS = {"epidural": (255, 60, 60), "intraparenchymal": (255, 200, 0),
           "intraventricular": (0, 220, 255), "subarachnoid": (60, 255, 60),
           "subdural": (255, 80, 255)}
REALCT = Path(__file__).resolve().parents[2] / "shared" / "realct"


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                         & mask[1:-1, :-2] & mask[1:-1, 2:])
    return mask & ~inner


def _tile(hu: np.ndarray, masks: dict[str, np.ndarray], caption: str,
          boxes: list[tuple[float, float, float, float, str]] = ()) -> Image.Image:
    """Brain-window picture with mask outlines and boxes, resized to TILE, with a caption."""
    gray = window_gray8(hu, 40.0, 80.0)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    for name, mask in masks.items():
        rgb[_outline(mask)] = COLOURS[name]
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for x, y, w, h, name in boxes:
        draw.rectangle([x, y, x + w, y + h], outline=COLOURS.get(name, (255, 255, 255)), width=2)
    image = image.resize((TILE, TILE), Image.BILINEAR)
    ImageDraw.Draw(image).text((6, 4), caption, fill=(255, 255, 0))
    return image


def _subtype_tile(kind: int, seed: int, preset: str = "train") -> Image.Image:
    """The slice where subtype ``kind`` is largest, in a study with only that subtype."""
    weights = tuple(1.0 if k == kind else 0.0 for k in range(5))
    cfg = PhantomConfig.preset(preset).with_updates(subtype_weights=weights, p_extra_subtype=0.0)
    study = generate_study(seed, n_slices=32, size=512, positive=True, config=cfg)
    area = study.masks[:, kind].sum(axis=(1, 2))
    k = int(area.argmax())
    name = LABELS[kind + 1]
    return _tile(study.hu[k], {name: study.masks[k, kind]},
                 f"phantom {preset}: {name} (seed {seed}, slice {k})")


def _normal_tile(seed: int, preset: str = "train") -> Image.Image:
    study = generate_study(seed, n_slices=32, size=512, positive=False, config=preset)
    k = int(len(study.hu) * 0.55)
    return _tile(study.hu[k], {}, f"phantom {preset}: normal (seed {seed}, slice {k})")


def _real_tiles() -> list[Image.Image]:
    boxes = read_boxes_csv(REALCT / "gt.csv")
    tiles = []
    for path in sorted(REALCT.glob("*.npy")):
        hu = np.load(path).astype(np.float32)
        hu[hu < -1024] = -1000.0
        found = [(b.x, b.y, b.width, b.height, b.label) for b in boxes.get(path.stem, [])]
        labels = ", ".join(sorted({b[4] for b in found}))
        tiles.append(_tile(hu, {}, f"real CQ500: {labels}", found))
    return tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parents[1] / "docs" / "phantom-gallery.png")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()
    rows = [
        [_subtype_tile(k, args.seed + k) for k in range(3)],
        [*(_subtype_tile(k, args.seed + k) for k in range(3, 5)), _normal_tile(args.seed + 9)],
        _real_tiles()[:3],
        [_real_tiles()[3], _subtype_tile(1, args.seed + 20, "shifted"),
         _normal_tile(args.seed + 21, "shifted")],
    ]
    sheet = Image.new("RGB", (3 * TILE, len(rows) * TILE))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (c * TILE, r * TILE))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
