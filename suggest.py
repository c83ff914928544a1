"""Which unlabelled images to label next, by what a trained ensemble does not know.

    python suggest.py --run <run folder> --pool DIR --k N [--strategy uncertainty|disagreement|diverse|random]
                      [--out DIR] [--seed S]

Segments every image of --pool (searched recursively) with the run's full inference and ranks them:
"uncertainty" is the original's image uncertainty (mean of the top uncertainty_top_fraction of the
pixels' mutual information between members), "disagreement" the same mean over the share of member
votes that differ from the majority, "diverse" the uncertainty spread out by feature diversity (each
next image maximises its uncertainty times its feature distance to the nearest one already chosen, so
the k suggestions are not near-copies of one hard image), "random" a seeded random order (the control).
Writes to --out (default <run>/suggestions_<strategy>): suggestions.csv (rank, stem, file, uncertainty,
disagreement) of the top N, and suggestions.png, a contact sheet of image | prediction | uncertainty
per suggestion.
"""
import argparse
import os
import sys

from ddpmseg.common.cli import run_cli
from ddpmseg.classifier.segmenter import Segmenter
from ddpmseg.classifier.suggest import CSV_NAME, DEFAULT_STRATEGY, SHEET_NAME, STRATEGIES, check_pool, suggest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="folder of a finished run (holds config.json and model_*.pth)")
    p.add_argument("--pool", required=True, help="folder of unlabelled images")
    p.add_argument("--k", type=int, required=True, help="how many images to suggest")
    p.add_argument("--strategy", choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help=f"(default: {DEFAULT_STRATEGY}; on celebamask64 no score beat a random choice: "
                        "docs/RESULTS.md, 'Active learning')")
    p.add_argument("--out", default=None, help="output folder (default: <run>/suggestions_<strategy>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random strategy's order (default: 0)")
    args = p.parse_args(argv)

    def job() -> None:
        out = args.out or os.path.join(args.run, f"suggestions_{args.strategy}")
        inputs = check_pool(args.pool, args.k, out)
        segmenter = Segmenter.from_run(args.run)
        chosen = suggest(segmenter, inputs, args.k, args.strategy, out, args.seed)
        print(f"suggested {len(chosen)} of {len(inputs)} pool images by {args.strategy}: "
              f"{', '.join(im.stem for im in chosen[:10])}{' ...' if len(chosen) > 10 else ''}")
        print(f"outputs: {os.path.join(out, CSV_NAME)}, {os.path.join(out, SHEET_NAME)}")

    return run_cli(job)


if __name__ == "__main__":
    sys.exit(main())
