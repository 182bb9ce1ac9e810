"""Command line: parse, load the recipe, call the library. User errors exit with code 2 and no traceback."""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

from edgesft import __version__
from edgesft.errors import EdgesftError

COMMANDS = ("validate", "run", "eval", "stages", "recipe-reference", "report", "check", "bench")


def _quiet_libraries() -> None:
    # Library chatter (deprecation notices, "legacy behaviour" banners) buries the figures users need.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import logging
    import warnings

    # bitsandbytes tries to fetch an optional fused CPU kernel from the hub and warns when it cannot; edgesft
    # runs offline by design and the stock kernels are used instead.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)


def cmd_validate(args: argparse.Namespace) -> int:
    from edgesft.config import load_recipe
    from edgesft.stages import STAGES

    recipe = load_recipe(args.recipe, args.overrides)
    stages: list[str] = []
    planned: dict[str, dict[str, Any]] = {}  # stages that would run, as skip() sees earlier manifests
    for n, spec in STAGES.items():
        if not (spec.skip and spec.skip(recipe, planned)):
            stages.append(n)
            planned[n] = {}
    print(
        f"{args.recipe}: ok (name {recipe.name!r}, stages: {', '.join(stages)}, "
        f"model {recipe.model.base!r}, method {recipe.train.method!r})"
    )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from edgesft.config import load_recipe
    from edgesft.pipeline import init_distributed, is_main, run_pipeline
    from edgesft.stages import STAGES

    recipe = load_recipe(args.recipe, args.overrides)
    if args.root:
        recipe.run_root = args.root
    init_distributed()
    log = print if is_main() else (lambda _msg: None)
    manifests = run_pipeline(recipe, STAGES, args.force, args.from_stage, args.until, log=log)
    if is_main():
        _print_run_summary(manifests)
        if "bench" in manifests:
            from edgesft.report import write_report

            print(f"report: {write_report(recipe.run_dir)}")
    return 0


def _print_run_summary(manifests: dict[str, dict[str, Any]]) -> None:
    """Quality after every model stage, measured the same way: one row per stage."""
    train = manifests.get("train", {}).get("metrics", {})
    if train:
        print(f"train: {train.get('steps')} steps, {train.get('train_tokens_per_s')} tok/s")
    rows = [("base (untuned)", train.get("base", {}))] if train.get("base") else []
    rows += [
        (name, m.get("metrics", {})) for name, m in manifests.items() if name in ("train", "merge", "prune")
    ]
    if not rows:
        return
    print(
        f"{'stage':16s} {'params':>12s} {'val ppl':>8s} {'exact':>7s} {'intent':>7s} {'slot F1':>7s} {'JSON':>7s}"
    )
    for name, m in rows:
        test = m.get("test") or {}
        params = m.get("params_total")
        cells = [f"{params:>12,}" if params else f"{'-':>12s}"]
        ppl = m.get("val_perplexity")
        cells.append(f"{ppl:8.3f}" if ppl is not None else f"{'-':>8s}")
        for key in ("exact_match", "intent_accuracy", "slot_f1", "valid_json"):
            cells.append(f"{100 * test[key]:7.1f}" if key in test else f"{'-':>7s}")
        print(f"{name:16s} " + " ".join(cells))


def _run_schema(path: Path, no_constrain: bool) -> tuple[Path | None, str | None]:
    """(file, text) of the answer schema that goes with an artifact of a run or bundle (None, None: none,
    or ``--no-constrain``)."""
    from edgesft.answer_schema import load_schema, schema_text
    from edgesft.runfolder import artifact_schema

    found = None if no_constrain else artifact_schema(path)
    return found, (schema_text(load_schema(found, "answer schema")) if found else None)


def cmd_eval(args: argparse.Namespace) -> int:
    from edgesft.evaluate import evaluate_target
    from edgesft.runfolder import resolve_artifact

    # a path is checked against its run's manifests first; anything else is a model name
    target = str(resolve_artifact(args.target)) if Path(args.target).exists() else args.target
    _, schema = _run_schema(Path(target), args.no_constrain) if Path(target).exists() else (None, None)
    result = evaluate_target(
        target,
        Path(args.data),
        task=args.task,
        max_rows=args.max_rows,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        progress=not args.json,
        schema=schema,
    )
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        m = result["metrics"]
        print(f"{args.target} on {args.data} ({m.get('n', 0)} rows)")
        for k in ("exact_match", "intent_accuracy", "slot_f1", "valid_json", "loss", "perplexity"):
            if k in m:
                print(f"  {k:16s} {m[k]:.4f}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from edgesft.runfolder import resolve_artifact
    from edgesft.runtimes import artifact_kind, encode_chat, open_artifact

    path = resolve_artifact(args.artifact)
    kind = artifact_kind(path)
    schema_file, schema = _run_schema(path, args.no_constrain)
    art = open_artifact(path, threads=args.threads)
    stops = set(art.eos_ids())
    interactive = sys.stdin.isatty()
    if interactive:
        mode = f"constrained to {schema_file} (--no-constrain: free)" if schema_file else "greedy"
        print(f"{path} ({kind}); {mode}, {args.max_new_tokens} tokens at most. /reset clears, Ctrl-D quits.")
    history: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    start = len(history)
    while True:
        try:
            text = input("> " if interactive else "")
        except EOFError:
            break
        if text.strip() == "/reset":
            del history[start:]
            continue
        if not text.strip():
            continue
        history.append({"role": "user", "content": text})
        try:
            prompt = encode_chat(art, history)
        except EdgesftError as e:
            print(f"error: {e}", file=sys.stderr)
            history.pop()
            continue
        new = art.generate(prompt, args.max_new_tokens, schema)
        if new and new[-1] in stops:
            new = new[:-1]
        answer = art.detokenize(new).strip()
        print(answer, flush=True)
        history.append({"role": "assistant", "content": answer})
    art.close()
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from edgesft.report import screenshot, write_report

    html = write_report(Path(args.run), Path(args.out) if args.out else None)
    for name in ("report.json", "report.md", "report.html"):
        print(html.parent / name)
    if args.screenshot:
        if not screenshot(html, Path(args.screenshot)):
            raise EdgesftError("--screenshot: no chromium, chromium-browser or google-chrome on PATH")
        print(args.screenshot)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from edgesft.gate import check

    log = (lambda _msg: None) if args.json else (lambda msg: print(msg, file=sys.stderr, flush=True))
    result = check(
        Path(args.current),
        Path(args.baseline),
        recipe=args.recipe,
        allowed_slowdown=args.allowed_slowdown,
        rounds=args.rounds,
        threads=args.threads,
        artifacts=args.artifacts,
        log=log,
    )
    print(json.dumps(result.to_json(), indent=2) if args.json else result.table())
    return 0 if result.passed else 1


def cmd_bench(args: argparse.Namespace) -> int:
    from edgesft.gate import load_bench, save_baseline
    from edgesft.runfolder import RunFolder

    run = Path(args.run)
    bench = load_bench(run, "RUN")
    folder = RunFolder(run)
    for key in bench["artifacts"]:  # figures about an artifact hold only while its files match its manifest
        art = folder.artifacts().get(key)
        if art is not None and art.status == "ok":
            folder.verify(art)
    if args.save_baseline is None:
        _print_bench_summary(bench)
        return 0
    dest = Path(args.save_baseline or Path("bench") / "baselines" / f"{run.resolve().name}.json")
    record = save_baseline(
        run, dest, recipe=args.recipe, rounds=args.rounds, threads=args.threads, artifacts=args.artifacts
    )
    print(dest)
    for key, a in record["artifacts"].items():
        if a.get("latency"):
            lat = a["latency"]
            rounds, threads = lat["rounds"], record["threads"]
            print(f"  {key}: {lat['decode_tok_s']:.1f} decode tok/s ({rounds} rounds, {threads} threads)")
    return 0


def _print_bench_summary(bench: dict[str, Any]) -> None:
    """One row per artifact of a run's bench.json."""
    print(
        f"{'artifact':32s} {'status':8s} {'MiB':>8s} {'tok/s':>8s} {'val ppl':>8s} {'KL':>7s} {'exact':>6s} {'rows':>6s}"
    )
    for key, a in bench["artifacts"].items():
        decode = ((a.get("latency") or {}).get("decode") or {}).get("0", {}).get("tok_s", {}).get("median")
        q = a.get("quality") or {}
        test = q.get("test") or {}
        exact = test.get("exact_match")
        cells = [
            f"{a['size_bytes'] / 2**20:8.1f}" if a.get("size_bytes") is not None else f"{'-':>8s}",
            f"{decode:8.1f}" if decode else f"{'-':>8s}",
            f"{q['val_perplexity']:8.3f}" if q.get("val_perplexity") is not None else f"{'-':>8s}",
            f"{q['kl_mean']:7.4f}" if q.get("kl_mean") is not None else f"{'-':>7s}",
            f"{100 * exact:6.1f}" if exact is not None else f"{'-':>6s}",
            f"{test.get('n', '-'):>6}",
        ]
        print(f"{key:32s} {str(a.get('status')):8s} " + " ".join(cells))


def cmd_stages(args: argparse.Namespace) -> int:
    from edgesft.stages import STAGES

    for name, spec in STAGES.items():
        print(f"{name:8s} {spec.description}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from edgesft.environment import doctor, format_doctor

    report = doctor()
    print(json.dumps(report, indent=2) if args.json else format_doctor(report))
    return 0


def cmd_recipe_reference(args: argparse.Namespace) -> int:
    from edgesft.docs import recipe_reference

    print(recipe_reference())
    return 0


def _positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (argparse turns the error into its usage line, exit 2)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {n}")
    return n


def _timing_options(p: argparse.ArgumentParser, rounds_help: str, artifact_help: str) -> None:
    """Options `check` and `bench --save-baseline` share."""
    p.add_argument("--recipe", help="recipe whose bench.check settings apply")
    p.add_argument("--rounds", type=_positive_int, metavar="N", help=rounds_help)
    p.add_argument("--threads", type=_positive_int, metavar="N", help="threads for every timed runtime")
    p.add_argument(
        "--artifact", dest="artifacts", action="extend", nargs="+", metavar="KEY", help=artifact_help
    )


class _Parser(argparse.ArgumentParser):
    """Command-line mistakes are one line and exit 2, like every other bad input (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


NO_CONSTRAIN = "decode freely, even when the run's data declared an answer schema (data.answer_schema)"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edgesft",
        description="Fine-tune, compress, export and verify small language models for the edge.",
    )
    p.add_argument("--version", action="version", version=f"edgesft {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    v = sub.add_parser("validate", help="check a recipe and report every problem at once")
    v.add_argument("recipe")
    v.add_argument("overrides", nargs="*", metavar="key.path=value")
    v.set_defaults(func=cmd_validate)

    r = sub.add_parser("run", help="run a recipe's stages (cached stages are skipped)")
    r.add_argument("recipe")
    r.add_argument("overrides", nargs="*", metavar="key.path=value")
    r.add_argument("--force", action="store_true", help="re-run every stage")
    r.add_argument(
        "--from", dest="from_stage", metavar="STAGE", help="re-run this stage and the ones after it"
    )
    r.add_argument("--until", metavar="STAGE", help="stop after this stage")
    r.add_argument("--root", help="run folder root (overrides run_root)")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("eval", help="task metrics of a model or a run's stage folder on a data file")
    e.add_argument(
        "target",
        help="stage folder (runs/NAME/train), model folder, .gguf file, ONNX folder, or a model name",
    )
    e.add_argument("--data", required=True, help="JSONL/JSON/CSV file in any supported row format")
    e.add_argument("--task", choices=("json", "text"), default="json")
    e.add_argument("--max-rows", type=_positive_int, default=None)
    e.add_argument("--max-new-tokens", type=_positive_int, default=64)
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.add_argument("--no-constrain", action="store_true", help=NO_CONSTRAIN)
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("chat", help="chat with an artifact (.gguf, ONNX folder, model folder, export folder)")
    c.add_argument("artifact")
    c.add_argument("--max-new-tokens", type=_positive_int, default=256)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--threads", type=int, default=None)
    c.add_argument("--no-constrain", action="store_true", help=NO_CONSTRAIN)
    c.set_defaults(func=cmd_chat)

    rp = sub.add_parser("report", help="rebuild a run's report.json, report.md and report.html (with plots)")
    rp.add_argument("run", help="run folder (runs/NAME)")
    rp.add_argument("--out", metavar="DIR", help="output folder (default: RUN/report)")
    rp.add_argument("--screenshot", metavar="PNG", help="also render the page to a PNG (headless Chromium)")
    rp.set_defaults(func=cmd_report)

    ck = sub.add_parser(
        "check", help="CI gate: compare a run or an artifact with a baseline (exit 1 on a regression)"
    )
    ck.add_argument(
        "current",
        metavar="CURRENT",
        help="run folder with a bench stage (runs/NAME), or an artifact (.gguf file, ONNX folder) when "
        "BASELINE is an artifact too",
    )
    ck.add_argument(
        "--baseline",
        required=True,
        help="baseline .json (edgesft bench --save-baseline), another run folder, or an artifact",
    )
    ck.add_argument(
        "--allowed-slowdown", type=float, metavar="X", help="e.g. 0.10: fail beyond +10%% decode time"
    )
    _timing_options(
        ck,
        "interleaved timing rounds (at least 10)",
        "artifacts whose decode time is gated, e.g. gguf/phone-Q4_K_M.gguf (default: the primary)",
    )
    ck.add_argument("--json", action="store_true", help="machine-readable output")
    ck.set_defaults(func=cmd_check)

    bn = sub.add_parser("bench", help="a run's bench figures; --save-baseline writes a baseline for check")
    bn.add_argument("run", metavar="RUN", help="run folder with a bench stage (runs/NAME)")
    bn.add_argument(
        "--save-baseline",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="write a baseline (default: bench/baselines/<run name>.json)",
    )
    _timing_options(
        bn,
        "timing rounds against the reference workload (at least 10)",
        "artifacts to time (default: the primary)",
    )
    bn.set_defaults(func=cmd_bench)

    dr = sub.add_parser(
        "doctor",
        help="versions of edgesft's libraries, CUDA, onnxruntime providers and the llama.cpp build "
        "(paste it into a bug report)",
    )
    dr.add_argument("--json", action="store_true", help="print JSON")
    dr.set_defaults(func=cmd_doctor)

    s = sub.add_parser("stages", help="list the pipeline stages")
    s.set_defaults(func=cmd_stages)
    d = sub.add_parser("recipe-reference", help="print every recipe field with its default and meaning")
    d.set_defaults(func=cmd_recipe_reference)
    return p


# The machine refused, or a path the user gave is no place to read or write (a folder where a file should
# be, a file where a folder should be, a name too long).
_ENVIRONMENT_ERRNOS = {
    errno.EACCES,
    errno.EPERM,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EISDIR,
    errno.ENOTDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
}


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    # Overrides may come after options (`run R --until train key=value`), which argparse's positional
    # handling rejects: collect leftover key=value words as overrides, refuse anything else.
    args, extra = parser.parse_known_args(argv)
    stray = [w for w in extra if "=" not in w or w.startswith("-")]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return int(args.func(args))
    except EdgesftError as e:
        for line in e.problems:
            print(f"error: {line}", file=sys.stderr)
        return 2
    except OSError as e:
        # The user's to fix, in one line: the machine refused, a path they gave is unusable, or a library
        # refused a model folder (transformers raises OSError without an errno: "no file named
        # model.safetensors", "not a valid JSON file"). Any other OSError (a missing file edgesft itself should
        # have checked) is a bug and keeps its traceback.
        if e.errno is not None and e.errno not in _ENVIRONMENT_ERRNOS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
