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
# The trainer's "auto" step must be at least this share of the fastest candidate of its own run (its probe
# may pick the slower of two candidates within a few percent of each other), and never below the original loop.
AUTO_OVER_FASTEST, AUTO_OVER_ORIGINAL = 0.95, 1.0
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


def auto_met(r: dict) -> bool:
    """Whether a throughput line's auto step meets both bounds (AUTO_OVER_FASTEST, AUTO_OVER_ORIGINAL)."""
    return r["auto_over_fastest_candidate"] >= AUTO_OVER_FASTEST and r["speedup"] >= AUTO_OVER_ORIGINAL


def iteration_span(iterations: list[int]) -> str:
    """The members' iteration counts as "n" when all are equal, else "lowest-highest"."""
    low, high = min(iterations), max(iterations)
    return f"{low:,}" if low == high else f"{low:,}-{high:,}"


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
        what = f"ensemble training throughput, {r['dim']}-d ({r['workload']} shapes), {r['torch_threads']} threads"
        lazy = (f", batched with per-batch upsampling {r['batched_lazy_pixels_per_s']:,}"
                if r["feature_matrix"] == "dense" else "")
        result = (f"`auto` (chose {r['auto_chosen']}) {r['auto_pixels_per_s']:,} vs "
                  f"{r['sequential_pixels_per_s']:,} pixels/s for the original loop: **{r['speedup']}x**{verdict}; "
                  f"{r['speedup_vs_sequential_fused_adam']}x vs that loop with fused Adam "
                  f"({r['sequential_fused_adam_pixels_per_s']:,}). Candidates in the same run: batched "
                  f"{r['batched_pixels_per_s']:,}, one member at a time {r['per_member_pixels_per_s']:,}"
                  f"{lazy}; auto is **{r['auto_over_fastest_candidate']}x** the fastest ({r['fastest_candidate']}) "
                  f"(auto ≥ {AUTO_OVER_FASTEST:g}x the fastest and ≥ {AUTO_OVER_ORIGINAL:g}x the original loop: "
                  f"{'met' if auto_met(r) else 'NOT met'}). "
                  f"Its probe took {r['auto_probe_s']} s, {100 * r['auto_probe_share_of_shortest_run']:.1f}% of the "
                  f"shortest full training of this store. Arithmetic floor {r['floor_pixels_per_s']:,} pixels/s "
                  f"({r['step_gflop']} GFLOP a step at the measured {r['matmul_gflop_per_s']} GFLOP/s); auto "
                  f"runs at {r['fraction_of_floor']} of it, the original loop at {original_at:.2f}")
    elif b == "end_to_end":
        what = (f"the celebamask64 command end to end vs the original harness ({r['training_images']} training and "
                f"{r['test_images']} test images, {r['members']} members, {r['dim']}-d, {r['device']}, "
                f"{r['torch_threads']} threads; same images, labels, steps, blocks, noise and checkpoint)")
        phases = "; ".join(
            f"{side} {r[side + '_features_s']} / {r[side + '_training_s']} / {r[side + '_evaluation_s']} / "
            f"{r[side + '_other_s']} s, {iteration_span(r[side + '_iterations_per_member'])} iterations per member, "
            f"peak RSS {r[side + '_peak_rss_gib']} GiB" for side in ("ours", "original"))
        result = (f"ours {r['ours_s']} s vs the original {r['original_s']} s: **{r['speedup']}x**; test mIoU "
                  f"{r['ours_miou']}% vs {r['original_miou']}%. Features / training / evaluation / the rest: "
                  f"{phases}")
    elif b == "scaling":
        fit, lsun = r["fits"], r["lsun256"]
        what = (f"scaling with labelled images ({', '.join(map(str, r['sizes']))} images, "
                f"{r['rows'][0]['dim']}-d small "
                f"U-Net, RAM and disk store, {r['torch_threads']} thread)")
        per_image = "; ".join(
            f"{store}: extraction {fit[store]['extraction_s']['slope_per_image']:.2f} s, peak RSS "
            f"{fit[store]['peak_rss_bytes']['slope_per_image'] / 2**20:.1f} MiB, store "
            f"{fit[store]['store_bytes']['slope_per_image'] / 2**20:.1f} MiB" for store in fit)
        result = (f"per image (least-squares slopes) {per_image}. The 256 px config: "
                  f"{lsun['store_gib_per_image']} GiB of store per image; {lsun['budget_gb']:g} GB holds "
                  f"**{lsun['max_images_ram_store']:,}** labelled images with the RAM store, "
                  f"**{lsun['max_images_disk_store']:,}** with the disk store (the scaling table below)")
    elif b in PLAIN_ROWS:
        what, result = (template.format(**r) for template in PLAIN_ROWS[b])
    else:
        return None
    return f"| {what} | `{command(r)}` | {result} |"


def table(lines: list[dict]) -> str:
    rows = [x for x in map(row, lines) if x]
    raw = [json.dumps(x, ensure_ascii=False) for x in lines]
    return "\n".join(["| what | command | result |", "|---|---|---|", *rows, "", "```", *raw, "```", ""])


def scaling_table(r: dict) -> str:
    """bench/scaling.py's line as its own table: every size and store, the fitted lines, the 256 px line."""
    mib = 2**20
    rows = [f"| {x['images']} | {x['store']} | {x['labelled_pixels']:,} | {x['extraction_s']} | "
            f"{x['training_s_per_iteration']} | {x['feature_matrix_s']} | {x['peak_rss_bytes'] / mib:,.0f} | "
            f"{x['store_bytes'] / mib:,.1f} |" for x in sorted(r["rows"], key=lambda x: (x["store"], x["images"]))]
    for store, fit in r["fits"].items():
        slope = {q: v["slope_per_image"] for q, v in fit.items()}
        rows.append(f"| per image (slope) | {store} | | {slope['extraction_s']:.3f} | "
                    f"{slope['training_s_per_iteration']:.5f} | | {slope['peak_rss_bytes'] / mib:,.1f} | "
                    f"{slope['store_bytes'] / mib:,.2f} |")
    lsun = r["lsun256"]
    return "\n".join([
        f"`{command(r)}`: {r['members']} members, {r['iterations']} and {2 * r['iterations']} training iterations "
        f"(seconds per iteration from their difference), {r['torch_threads']} torch thread.", "",
        "| images | store | labelled pixels | extraction s | training s / iteration | feature matrix s | "
        "peak RSS MiB | store MiB |", "|---|---|---|---|---|---|---|---|", *rows, "",
        f"The published 256 px config ({lsun['config']}, {lsun['dim']}-d): **{lsun['store_gib_per_image']} GiB** "
        f"of float16 store per image and {lsun['labels_mib_per_image']} MiB of labels; fixed "
        f"{lsun['fixed_gib']} GiB (a {lsun['unet_params']:,}-parameter U-Net, the members' training state "
        f"{lsun['ensemble_training_state_gib']} GiB, the process). Within {lsun['budget_gb']:g} GB: "
        f"**{lsun['max_images_ram_store']:,} images** with the RAM store, **{lsun['max_images_disk_store']:,}** "
        f"with the disk store (then {lsun['disk_gib_at_that_size']:,} GiB on disk). Assumptions: "
        f"{lsun['assumptions']}", ""])


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/bench/cpu.jsonl"
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    publish("bench", table(lines))
    for line in lines:
        if line["bench"] == "scaling":
            publish("scaling", scaling_table(line))
