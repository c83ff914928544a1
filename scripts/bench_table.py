"""Write the benchmark table of docs/benchmarks.md from the benches' JSON lines (never typed by hand).

    python bench/memory.py > docs/bench/cpu.jsonl
    python bench/ensemble_throughput.py --workload lsun256 >> docs/bench/cpu.jsonl   # etc.
    python scripts/bench_table.py docs/bench/cpu.jsonl

Each line carries the arguments its bench ran with, so the table's command column is the
command that produced the number.
"""
from __future__ import annotations

import json
import sys

from readme_block import publish

# bench/ensemble_throughput.py targets: speed-up over the original loop by feature size.
THROUGHPUT_TARGETS = {1152: 3.0, 8448: 2.0}
# Benches whose row is its JSON line's fields put into words: (what was measured, the result).
PLAIN_ROWS = {
    "extraction": (
        "feature extraction, {image_size} px ({workload} flags, {images} image(s) per call, {precision}, "
        "{torch_threads} threads)",
        "{ours_images_per_s} vs {original_images_per_s} images/s for the original's one-step-per-forward batch-1 "
        "path: **{speedup}x**; {ours_tflop_per_image} vs {original_tflop_per_image} TFLOP per image (one full "
        "forward: {forward_tflop} TFLOP); achieved {ours_tflop_per_s} vs {original_tflop_per_s} TFLOP/s"),
    "segment": (
        "segmenting new images, celebamask64 test ({images} images, {members} members, {dim}-d, {torch_threads} "
        "threads)",
        "ddpmseg segment {segment_images_per_s} vs evaluation {evaluation_images_per_s} images/s: "
        "**{segment_over_evaluation}x** (same votes, plus probabilities, uncertainty map, 3 PNGs and a CSV row "
        "per image); 2:1 images (3 windows each) {segment_2to1_images_per_s} images/s"),
}


def command(r: dict) -> str:
    return " ".join([f"python bench/{r['bench']}.py", *r.get("argv", [])])


def row(r: dict) -> str | None:
    b = r["bench"]
    if b == "memory":
        what = f"peak RSS of ensemble training ({r['workload']}, {r['training_steps']} iterations)"
        n = [k for k in r if k.startswith("original_peak_rss_gib_")][0].rsplit("_", 1)[1]
        result = (f"**{r['ours_peak_rss_gib']} GiB** (target ≤ {r['target_gib']:g} GB); of it {r['ours_store_gib']} GiB "
                  f"is the float16 store. The original's X alone would be {r['original_X_gib_computed']} GiB "
                  f"(computed); measured on {n[:-3]} image(s), the original layout peaks at "
                  f"{r['original_peak_rss_gib_' + n]} GiB vs our {r['ours_peak_rss_gib_' + n]} GiB")
    elif b == "ensemble_throughput":
        target = THROUGHPUT_TARGETS.get(r["dim"])
        verdict = "" if target is None else f" (target ≥ {target:g}x: {'met' if r['speedup'] >= target else 'NOT met'})"
        original_at = r["sequential_pixels_per_s"] / r["floor_pixels_per_s"]
        need = "" if target is None else f"; the target needs {target * original_at:.2f} of the floor"
        what = f"ensemble training throughput, {r['dim']}-d ({r['workload']} shapes), {r['torch_threads']} threads"
        result = (f"{r['batched_pixels_per_s']:,} vs {r['sequential_pixels_per_s']:,} pixels/s for the original loop: "
                  f"**{r['speedup']}x**{verdict}; {r['speedup_vs_sequential_fused_adam']}x vs that loop with fused "
                  f"Adam. Candidates in the same run: {r['feature_matrix']} feature matrix (lazy "
                  f"{r['batched_lazy_pixels_per_s']:,}), one member at a time {r['per_member_pixels_per_s']:,}. "
                  f"Arithmetic floor {r['floor_pixels_per_s']:,} pixels/s ({r['step_gflop']} GFLOP a step at "
                  f"the measured {r['matmul_gflop_per_s']} GFLOP/s); we run at {r['fraction_of_floor']} of it, the "
                  f"original loop at {original_at:.2f}{need}")
    elif b in PLAIN_ROWS:
        what, result = (template.format(**r) for template in PLAIN_ROWS[b])
    else:
        return None
    return f"| {what} | `{command(r)}` | {result} |"


def table(lines: list[dict]) -> str:
    rows = [x for x in map(row, lines) if x]
    raw = [json.dumps(x, ensure_ascii=False) for x in lines]
    return "\n".join(["| what | command | result |", "|---|---|---|", *rows, "", "```", *raw, "```", ""])


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/cpu.jsonl"
    with open(path) as f:
        text = table([json.loads(line) for line in f if line.strip()])
    publish("bench", text)
