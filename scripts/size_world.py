"""Synthetic items of several evidence sizes in one Records JSONL, for `vision-opd gap`'s size bins.

The built-in world has one evidence size (a 27 px frame on a 168 px canvas: 2.6% of the area). This script draws the
same world on canvases of several sides, so the framed target's share of the image shrinks as the canvas grows:
112 px 5.8%, 168 px 2.6%, 240 px 1.3%, 336 px 0.65%, 480 px 0.32% (one canvas per default size bin). A model with a
fixed pixel budget (the demo model: 168 x 168) sees the larger canvases downscaled, so small evidence is also
small in its vision tokens, which is what the size bins measure.

    python scripts/size_world.py --out data/sizes --n-per-size 60 --seed 4
    vision-opd gap --model src/vision_opd/assets/demo_model --benchmark synthetic --data data/sizes/records.jsonl \\
        --out runs/gap_sizes --views full,crop
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from vision_opd.data.records import write_records  # noqa: E402
from vision_opd.demo.world import WorldConfig, generate  # noqa: E402

CANVASES = (112, 168, 240, 336, 480)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (records.jsonl + images/)")
    ap.add_argument("--n-per-size", type=int, default=60, help="items per canvas size")
    ap.add_argument("--seed", type=int, default=4, help="world seed (4 = the test split's seed)")
    ap.add_argument("--canvases", default=",".join(map(str, CANVASES)), help="canvas sides in pixels, comma-separated")
    args = ap.parse_args(argv)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for canvas in (int(c) for c in args.canvases.split(",")):
        items = generate(args.n_per_size, args.seed, WorldConfig(canvas=canvas), image_dir=(out / "images").resolve(),
                         prefix=f"c{canvas}_")
        for rec, img in items:
            img.save(rec.image)
            rec.meta["canvas"] = canvas
            records.append(rec)
    write_records(records, out / "records.jsonl")
    print(f"wrote {len(records)} records ({args.n_per_size} per canvas of {args.canvases} px) to {out / 'records.jsonl'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
