"""How the default `label_threshold` is chosen: leave-one-out predictions of the embedded model on a seeded sample of
the bundled corpus (the default settings: fewshot prompt, 8 similar shots; an item never sees itself as an example),
then every threshold on a grid is scored on the same probabilities; the one with the best samples-F1 wins (ties: the
higher threshold, fewer extra labels). Micro-F1 is shown beside it.

    .venv/bin/python -m benchmarks.threshold              # 150 texts, seed 0 (~10 min on 2 busy cores)
    .venv/bin/python -m benchmarks.threshold --n 40       # quicker, noisier
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks.scenarios import corpus


def sweep(gold: list[list[str]], probs: list[dict[str, float]], labels: list[str], max_labels: int = 3,
          grid: list[float] | None = None) -> list[dict[str, float]]:
    """samples-F1, micro-F1 and labels per item of the predicted sets at each threshold of `grid`."""
    from labelwise._metrics import score
    from labelwise._answer import labels_from_probs

    rows = []
    for t in grid or [round(0.05 * i, 2) for i in range(1, 20)]:
        pred = [labels_from_probs(p, True, max_labels, t) for p in probs]
        s = score(gold, pred, labels, n_boot=0)
        rows.append({"threshold": t, "samples_f1": s.samples_f1, "micro_f1": s.micro_f1,
                     "labels_per_item": sum(map(len, pred)) / len(pred)})
    return rows


def main(argv: list[str] | None = None) -> int:
    """Label the sample, print the sweep and the chosen threshold."""
    from labelwise import Labeler

    p = argparse.ArgumentParser(prog="python -m benchmarks.threshold", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=150, help="texts in the seeded sample")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    c = corpus()
    sample = random.Random(args.seed).sample(c.items, args.n)
    labeler = Labeler("local", examples=c, cache=False)
    t0 = time.perf_counter()
    preds = labeler.label_many([it.text for it in sample])
    seconds = time.perf_counter() - t0
    rows = sweep([list(it.labels) for it in sample], [p.label_probs for p in preds], list(labeler.taxonomy.labels),
                 labeler.settings.max_labels)
    print(f"{args.n} texts (seed {args.seed}), {sum(len(it.labels) > 1 for it in sample)} multi-label; "
          f"{args.n / seconds:.2f} texts/s")
    print("| threshold | samples-F1 | micro-F1 | labels/item |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['threshold']:.2f} | {r['samples_f1']:.3f} | {r['micro_f1']:.3f} | {r['labels_per_item']:.2f} |")
    best = max(rows, key=lambda r: (round(r["samples_f1"], 6), r["threshold"]))
    print(f"chosen: {best['threshold']:.2f} (samples-F1 {best['samples_f1']:.3f}, micro-F1 {best['micro_f1']:.3f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
