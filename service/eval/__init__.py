"""`quell eval`: measure how often a policy leaks and how often it blocks the innocent, per layer, with baselines.

Modules, in the order a run uses them:
    probes      read the JSONL evaluation sets into `Probe`s (and pick a stratified `--limit`)
    transforms  attack rewrites of a probe's prompt (spelled out, leetspeak, lookalikes, ...)
    configs     what each column of the report runs: baselines against vLLM, one gateway per layer
    gateways    start (and always stop) the gateways of those columns around one vLLM
    runner      send every (probe, transform, config) once, append to results.jsonl, resume
    judge       did the answer or a target term reach the output; was the output refused, cut or redacted
    stats       counts, rates and Wilson 95% intervals
    summary     results.jsonl -> summary.json (per config, transform, probe type, language)
    thresholds  semantic scores of the unfiltered outputs -> leak vs over-blocking across thresholds
    report      summary -> report.html with embedded plots
    command     the typer command (`quell eval`)
"""
