"""The benchmark's results as Markdown (printed, and saved as bench/results/latest.md), and issue 7's targets."""

from __future__ import annotations

from typing import Any

# Issue 7's reference figures for LiteLLM Proxy 1.108 on a machine of this kind, used when it is not run.
LITELLM_REFERENCE = {"rps_c64": "40-115 req/s", "rss_mb": 1100}


def num(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def pair(a: float | None, b: float | None, digits: int = 2) -> str:
    return f"{num(a, digits)} / {num(b, digits)}"


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


def overhead(level: dict[str, Any], target: str, field: str) -> float | None:
    """`target`'s figure minus the direct one (ms), e.g. overhead(level, "portal", "p50_ms")."""
    run = level.get(target)
    return diff(run.get(field), level["direct"].get(field)) if run else None


def targets_present(levels: list[dict[str, Any]]) -> list[str]:
    return [t for t in ("portal", "litellm") if any(t in level for level in levels)]


def label(target: str) -> str:
    return {"portal": "portal", "litellm": "LiteLLM"}[target]


def non_streaming_table(levels: list[dict[str, Any]]) -> list[str]:
    rows = [lv for lv in levels if not lv["stream"]]
    targets = targets_present(rows)
    head = ["c", "direct req/s", "direct p50 / p99 ms"]
    for t in targets:
        head += [f"{label(t)} req/s", f"{label(t)} p50 / p99 ms", f"{label(t)} overhead p50 / p99 ms",
                 f"{label(t)} CPU ms/req"]
    if "litellm" in targets:
        head.append("req/s portal ÷ LiteLLM")
    head.append("errors")
    lines = [_row(head), _row(["---"] * len(head))]
    for lv in rows:
        d = lv["direct"]
        cells = [str(lv["concurrency"]), num(d["rps"], 0), pair(d["p50_ms"], d["p99_ms"])]
        for t in targets:
            run = lv.get(t)
            if run is None:
                cells += ["–"] * 4
                continue
            cells += [num(run["rps"], 0), pair(run["p50_ms"], run["p99_ms"]),
                      pair(overhead(lv, t, "p50_ms"), overhead(lv, t, "p99_ms")),
                      num(lv["cpu_ms_per_request"].get(t))]
        if "litellm" in targets:
            cells.append(_ratio(lv, "rps"))
        cells.append(_errors(lv, targets))
        lines.append(_row(cells))
    return lines


def streaming_table(levels: list[dict[str, Any]]) -> list[str]:
    rows = [lv for lv in levels if lv["stream"]]
    targets = targets_present(rows)
    head = ["upstream", "c", "direct TTFT p50 / p99 ms", "direct total p50 / p99 ms"]
    for t in targets:
        head += [f"{label(t)} TTFT p50 / p99 ms", f"{label(t)} TTFT overhead p50 / p99",
                 f"{label(t)} total p50 / p99 ms", f"{label(t)} total overhead p50 / p99",
                 f"{label(t)} streams/s", f"{label(t)} CPU ms/stream"]
    head.append("errors")
    lines = [_row(head), _row(["---"] * len(head))]
    for lv in rows:
        d = lv["direct"]
        cells = [lv["upstream"], str(lv["concurrency"]), pair(d["ttft_p50_ms"], d["ttft_p99_ms"]),
                 pair(d["p50_ms"], d["p99_ms"])]
        for t in targets:
            run = lv.get(t)
            if run is None:
                cells += ["–"] * 6
                continue
            cells += [pair(run["ttft_p50_ms"], run["ttft_p99_ms"]),
                      pair(overhead(lv, t, "ttft_p50_ms"), overhead(lv, t, "ttft_p99_ms")),
                      pair(run["p50_ms"], run["p99_ms"]),
                      pair(overhead(lv, t, "p50_ms"), overhead(lv, t, "p99_ms")),
                      num(run["rps"], 1), num(lv["cpu_ms_per_request"].get(t))]
        cells.append(_errors(lv, targets))
        lines.append(_row(cells))
    return lines


def _ratio(level: dict[str, Any], field: str) -> str:
    portal, litellm = level.get("portal"), level.get("litellm")
    if not portal or not litellm or not litellm.get(field):
        return "–"
    return f"{portal[field] / litellm[field]:.1f}×"


def _errors(level: dict[str, Any], targets: list[str]) -> str:
    return " / ".join(str(level[t]["errors"]) if t in level else "–" for t in ["direct", *targets])


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def find(levels: list[dict[str, Any]], *, stream: bool, concurrency: int, upstream: str = "unpaced") -> Any:
    for lv in levels:
        if lv["stream"] == stream and lv["concurrency"] == concurrency and (not stream or lv["upstream"] == upstream):
            return lv
    return None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 7's targets (and issue 4's quota figure), each with what this run measured and whether it is met."""
    levels = results["levels"]
    out: list[dict[str, Any]] = []

    def add(name: str, goal: str, measured: str, met: bool | None) -> None:
        out.append({"name": name, "target": goal, "measured": measured, "met": met})

    if lv := find(levels, stream=False, concurrency=1):
        value = overhead(lv, "portal", "p50_ms")
        add("non-streaming overhead p50, c=1", "≤ 2 ms", f"{num(value)} ms", _le(value, 2))
    if lv := find(levels, stream=True, concurrency=1):
        ttft, total = overhead(lv, "portal", "ttft_p50_ms"), overhead(lv, "portal", "p50_ms")
        add("streaming TTFT overhead p50, c=1", "≤ 3 ms", f"{num(ttft)} ms", _le(ttft, 3))
        add("22-event stream total overhead p50, c=1", "< 4 ms", f"{num(total)} ms", _le(total, 4, strict=True))
    if lv := find(levels, stream=True, concurrency=1, upstream="5 ms paced"):
        ttft, total = overhead(lv, "portal", "ttft_p50_ms"), overhead(lv, "portal", "p50_ms")
        add("paced stream TTFT / total overhead p50, c=1", "≤ 3 ms / < 4 ms", f"{num(ttft)} / {num(total)} ms",
            None if ttft is None or total is None else ttft <= 3 and total < 4)
    top = max((lv["concurrency"] for lv in levels if not lv["stream"]), default=None)
    if top is not None and (lv := find(levels, stream=False, concurrency=top)):
        portal_rps = lv["portal"]["rps"]
        if "litellm" in lv and lv["litellm"]["rps"]:
            ratio = portal_rps / lv["litellm"]["rps"]
            add(f"throughput c={top} vs LiteLLM Proxy", "≥ 10×", f"{ratio:.1f}× ({portal_rps:.0f} req/s)",
                ratio >= 10)
        else:
            add(f"throughput c={top} vs LiteLLM Proxy", "≥ 10×",
                f"{portal_rps:.0f} req/s (LiteLLM not run; issue 7 measured {LITELLM_REFERENCE['rps_c64']})", None)
    memory = results.get("memory", {})
    portal_mem = memory.get("portal", {}).get("after_load", {})
    litellm_mem = memory.get("litellm", {}).get("after_load", {})
    portal_rss, litellm_rss = portal_mem.get("rss_mb"), litellm_mem.get("rss_mb")
    if portal_rss is not None:
        if litellm_rss:
            pss = ""
            if portal_mem.get("pss_mb") and litellm_mem.get("pss_mb"):
                pss = f" (PSS {portal_mem['pss_mb']:.0f} vs {litellm_mem['pss_mb']:.0f} MB)"
            add("web tier RSS after load vs LiteLLM Proxy", "≤ ½",
                f"{portal_rss:.0f} MB vs {litellm_rss:.0f} MB{pss}", portal_rss <= litellm_rss / 2)
        else:
            add("web tier RSS after load vs LiteLLM Proxy", "≤ ½",
                f"{portal_rss:.0f} MB (LiteLLM not run; issue 7 measured ~{LITELLM_REFERENCE['rss_mb']} MB)", None)
    start = results.get("startup", {}).get("portal_s")
    if start is not None:
        add("start to first 200 on /health/liveliness", "< 5 s", f"{start:.2f} s", start < 5)
    errors = sum(lv[t]["errors"] for lv in levels for t in ("direct", "portal") if t in lv)
    quota_runs = results.get("quota") or {}
    quota_c1 = results.get("quota_c1") or {}
    errors += sum(run[k]["errors"] for run in (quota_runs, quota_c1) for k in ("with_limits", "without_limits")
                  if k in run)
    add("errors at every level", "0", str(errors), errors == 0)
    usage = results.get("usage") or {}
    if usage.get("available"):
        add("usage records written for every request", f"{usage['expected']}", f"{usage['count']}",
            usage["count"] == usage["expected"])
    else:
        add("usage records written for every request", "=", "n/a (no tracking.UsageRecord)", None)
    if quota_runs.get("p50_diff_ms") is not None:
        value, work = quota_runs["p50_diff_ms"], quota_runs.get("work_diff_ms")
        paired = quota_runs.get("paired_p50_diff_ms")
        add(f"issue 4: quota checks p50 cost, c={quota_runs['concurrency']}", "< 1 ms",
            f"{num(value)} ms p50; median of rounds {num(paired)} ms ({num(work)} ms of work per request)",
            value < 1 and (paired is None or paired < 1))
    if quota_c1.get("p50_diff_ms") is not None:
        add("issue 4: quota checks p50 cost, c=1 (latency the checks add, no queueing)", "(< 1 ms)",
            f"{num(quota_c1['p50_diff_ms'])} ms p50", None)
    return out


def _le(value: float | None, limit: float, strict: bool = False) -> bool | None:
    if value is None:
        return None
    return value < limit if strict else value <= limit


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        "# Benchmark results",
        "",
        f"Run {meta['started']} on commit `{meta['commit']}`: {meta['cores']} cores ({meta['cpu']}), "
        f"Python {meta['python']}. Load average before / after: {meta['loadavg_before']} / {meta['loadavg_after']}"
        f"{' — other work was running on the machine, so latencies are noisy' if meta['busy'] else ''}."
        + (" Machine speed: a plain Python loop took {} / {} ns per iteration before / after the run (CPU time, so "
           "it shows how fast the cores run, not how busy they are; on a shared host it swings with the "
           "neighbours' load, and every figure below with it).".format(*meta["python_ns_per_loop"])
           if meta.get("python_ns_per_loop") else ""),
        "",
        f"Portal: gunicorn + {meta['workers']} uvicorn workers, {meta['database']}, "
        f"{'Redis' if meta['redis'] else 'no Redis (in-process cache and quota store)'}, "
        f"{'a real user API key' if meta['key_kind'] == 'user' else 'the master key (no user keys yet)'}, "
        "quotas on (deployment rpm/rpd/tpm and key rpm/rpd/tokens set high enough never to refuse). "
        f"Mock upstream: {meta['chunks'] + 2}-event streams (+ [DONE]), unpaced and paced at "
        f"{meta['pace_ms']:g} ms per event. Per level: {meta['requests_per_level']} requests or "
        f"{meta['seconds_per_level']:g} s, whichever ends first, after a warm-up; the same aiohttp client drives "
        "the mock directly and through the portal, so overhead = portal − direct."
        + (" **Quick run: too few requests for stable p99.**" if meta["quick"] else ""),
        "",
        "## Non-streaming",
        "",
        *non_streaming_table(results["levels"]),
        "",
        "## Streaming (TTFT = first content chunk; total = through [DONE])",
        "",
        *streaming_table(results["levels"]),
        "",
        "Errors are counted direct / portal" + (" / LiteLLM" if results.get("litellm") else "")
        + ", warm-up included. CPU ms/req is the CPU time the server's whole process tree used during the level "
        "(less its idle burn), divided by the requests: the figure a busy machine disturbs least.",
        "",
    ]
    lines += _quota_section(results.get("quota"))
    lines += _quota_section(results.get("quota_c1"), unsaturated=True)
    lines += _large_inputs_section(results.get("large_inputs"))
    lines += _resources_section(results)
    lines += ["## Targets (issue 7; issue 4 for quotas)", "", "| figure | target | measured | met |",
              "| --- | --- | --- | --- |"]
    for t in results["targets"]:
        met = "–" if t["met"] is None else ("yes" if t["met"] else "**no**")
        lines.append(f"| {t['name']} | {t['target']} | {t['measured']} | {met} |")
    lines.append("")
    return "\n".join(lines)


def _large_inputs_section(large: dict[str, Any] | None) -> list[str]:
    """Ordinary requests beside large ones (issue 17): a worker whose event loop stalls shows it in their p99."""
    if not large:
        return []
    alone, beside, counts = large["alone"], large["beside_large"], large["large_requests"]
    return [
        f"## Large inputs beside ordinary traffic (issue 17): non-streaming chat, c=1, beside {large['clients']} "
        "clients sending 2,048-input embeddings and ~1 MB chat bodies",
        "",
        "| ordinary requests | p50 | p99 | errors |",
        "| --- | --- | --- | --- |",
        f"| alone | {num(alone['p50_ms'])} ms | {num(alone['p99_ms'])} ms | {alone['errors']} |",
        f"| beside large requests | {num(beside['p50_ms'])} ms | {num(beside['p99_ms'])} ms | {beside['errors']} |",
        "",
        f"Large requests answered: {counts['ok']}, errors: {counts['errors']}. Target: ordinary p99 under 50 ms.",
        "",
    ]


def _quota_section(quota: dict[str, Any] | None, unsaturated: bool = False) -> list[str]:
    if not quota:
        return []
    on, off = quota["with_limits"], quota["without_limits"]
    why = (["At concurrency 1 no request waits behind another, so the difference is the latency the checks "
            "themselves add to a request. (At concurrency 32 the two cores are saturated, and by Little's law "
            "the p50 there grows by about 16 requests per worker times the extra work of each.)", ""]
           if unsaturated else [])
    return [
        f"## Quota checks (issue 4): non-streaming, c={quota['concurrency']}",
        "",
        *why,
        "| deployment and key | req/s | p50 / p99 ms | portal CPU ms/req | Redis script ms/req (calls) | errors |",
        "| --- | --- | --- | --- | --- | --- |",
        f"| without limits | {num(off['rps'], 0)} | {pair(off['p50_ms'], off['p99_ms'])} | "
        f"{num(off.get('cpu_ms_per_request'))} | {_scripts(off)} | {off['errors']} |",
        f"| with limits (rpm, rpd, tpm; key rpm, rpd, tokens) | {num(on['rps'], 0)} | "
        f"{pair(on['p50_ms'], on['p99_ms'])} | {num(on.get('cpu_ms_per_request'))} | {_scripts(on)} | "
        f"{on['errors']} |",
        "",
        f"Both run in {quota['rounds']} interleaved rounds (ABBA order). "
        f"Cost of the quota checks: {num(quota['p50_diff_ms'])} ms p50, {num(quota['p99_diff_ms'])} ms p99; "
        f"round by round, a median of {num(quota.get('paired_p50_diff_ms'))} ms p50 "
        f"(latency, inflated by whatever else the machine runs); {num(quota.get('work_diff_ms'))} ms of work per "
        "request (portal CPU + Redis script time, which other load does not inflate). Redis script time comes from "
        "INFO commandstats and includes other clients' scripts if the server is shared."
        + (f" Largest per-minute window in Redis at the end: {quota['largest_window_entries']} fields (one bucket "
           "per second of the last minute, plus its live total and oldest bucket: a check reads the total and "
           "drops the buckets that expired, so its cost does not grow with the request rate)."
           if quota.get("largest_window_entries") is not None else ""),
        "",
    ]


def _scripts(run: dict[str, Any]) -> str:
    if run.get("redis_script_ms_per_request") is None:
        return "–"
    return f"{run['redis_script_ms_per_request']:.3f} ({run['redis_script_calls_per_request']:.1f})"


def _resources_section(results: dict[str, Any]) -> list[str]:
    memory = results.get("memory", {})
    startup = results.get("startup", {})
    lines = ["## Start time and memory", "", "| server | start to first 200 | CPU used to start | RSS idle | "
             "RSS after load | RSS after load + settle | PSS idle | PSS after load | processes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ("portal", "litellm"):
        mem = memory.get(name)
        if not mem:
            continue
        idle, after, settled = mem.get("idle", {}), mem.get("after_load", {}), mem.get("after_settle", {})
        lines.append(
            f"| {label(name)} | {num(startup.get(name + '_s'))} s | {num(startup.get(name + '_cpu_s'))} s | "
            f"{num(idle.get('rss_mb'), 0)} MB | "
            f"{num(after.get('rss_mb'), 0)} MB | {num(settled.get('rss_mb'), 0)} MB | "
            f"{num(idle.get('pss_mb'), 0)} MB | {num(after.get('pss_mb'), 0)} MB "
            f"| {after.get('processes', '–')} |"
        )
    idle = results.get("idle_cpu_ms_per_s") or {}
    settle = memory.get("portal", {}).get("settle_seconds")
    lines += ["", f"Settle: {num(settle, 0)} s after the load (and the usage records' wait). "
              "RSS counts pages shared by the forked workers once per process; PSS splits them fairly "
              "(the real footprint). Idle CPU burn: "
              + ", ".join(f"{label(k) if k != 'mock' else 'mock'} {v:.1f} ms/s" for k, v in idle.items()) + ".", ""]
    usage = results.get("usage") or {}
    if usage.get("available"):
        lines += [f"Usage records: {usage['count']} written for {usage['expected']} requests sent to the portal "
                  f"({usage['ok']} ok, {usage['streamed']} streamed, {usage['with_tokens']} with token counts; "
                  f"read {usage['waited_s']:.1f} s after the load, while serving).", ""]
    else:
        lines += ["Usage records: n/a (tracking has no UsageRecord model).", ""]
    return lines
