"""`compare`: several seeds (and settings) of one recipe, trained one after another, in one table.

    python -m src.cli compare --config configs/smollm2.yaml --seeds 42,1,2 \\
        [--set model.optimizer.learning_rate=1e-3,2e-3] [--set data.batch_size=2,4] [--out docs/results/NAME]
    python -m src.cli compare --runs runs/compare [more run folders] --out docs/results/NAME

Every combination of the `--set` values, for every seed, is a normal `fit` through the project's CLI in
a subprocess of its own (a crash loses that run only), into `<output_dir>/<setting>/seed_<seed>`. A
run that finished before (its `metrics.json` is there and its command is the same) is read, not
re-run, so an interrupted comparison resumes where it stopped. `--runs` reads finished runs instead of
training. Writes `NAME.md` and `NAME.json`: per seed, mean and worst, overall and per kind, for every
held-out set (base model and kept adapter), training time and tokens, with the CPU kind, the commit and
the exact commands. Any other option (`--config`, `--trainer.max_steps`, ...) goes to every `fit`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from src.errors import ConfigurationError
from src.models.precision import cpu_flags
from src.tools.comparison_table import Context, RunResult, comparison, markdown

ROOT = Path(__file__).resolve().parents[2]
SET_SYNTAX = "--set SECTION.KEY=VALUE[,VALUE...], e.g. --set model.optimizer.learning_rate=1e-3,2e-3"
"""A value may be a list or mapping (`--set 'model.lora.layers=[28,29],null'`): commas inside brackets stay in it."""
OWN_KEYS = ("trainer.default_root_dir", "trainer.logger", "seed_everything")
"""Keys the comparison sets for each run itself: `--set` may not vary them (seeds go to `--seeds`)."""
COMMAND_FILE = "command.json"
LOG_FILE = "fit.log"


def tool_options(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(
        prog="python -m src.cli compare", allow_abbrev=False,
        description="Train (or read) several seeds and settings of a config and write one comparison; "
        "every `fit` option is accepted too and goes to every run.",
    )
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 42,1,2 (default: the config's)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=V1,V2",
                        help="a config key and the values to compare (repeatable: the grid of all combinations)")
    parser.add_argument("--runs", nargs="+", default=None, metavar="DIR",
                        help="read these finished runs (folders holding metrics.json) instead of training")
    parser.add_argument("--output_dir", default="runs/compare", help="where the grid's run folders go")
    parser.add_argument("--out", default=None,
                        help="path of the comparison without extension: writes OUT.md and OUT.json "
                        "(default: <output_dir>/comparison)")
    options, rest = parser.parse_known_args(list(argv))
    return options, rest


def parse_seeds(text: str | None) -> list[int | None]:
    """`42,1,2` -> [42, 1, 2]; None -> [None] (one run with the config's own seed)."""
    if text is None:
        return [None]
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigurationError(f"--seeds {text!r}: expected comma-separated integers, e.g. --seeds 42,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigurationError(f"--seeds {text!r}: a seed is repeated; each seed runs once")
    return seeds


def parse_sets(texts: Sequence[str]) -> list[tuple[str, list[str]]]:
    """`["model.optimizer.learning_rate=1e-3,2e-3"]` -> [("model.optimizer.learning_rate", ["1e-3", "2e-3"])], every mistake at once."""
    problems, parsed = [], []
    for text in texts:
        key, equals, values = text.partition("=")
        key = key.strip().removeprefix("--")
        choices = [value.strip() for value in top_level_values(values)]
        if any(key == own or key.startswith(own + ".") for own in OWN_KEYS):
            problems.append(f"--set {text!r}: {key} is set by the comparison for each run; give seeds with --seeds")
        elif not equals or not re.fullmatch(r"(model|data|trainer)\.[A-Za-z_][\w.]*", key):
            problems.append(f"--set {text!r}: expected {SET_SYNTAX} (SECTION is model, data or trainer)")
        elif any(not value for value in choices):
            problems.append(f"--set {text!r}: an empty value; expected {SET_SYNTAX}")
        elif len(set(choices)) != len(choices):
            problems.append(f"--set {text!r}: a value is repeated")
        elif key in (k for k, _ in parsed):
            problems.append(f"--set {text!r}: {key} is given twice; list all its values in one --set")
        else:
            parsed.append((key, choices))
    if problems:
        raise ConfigurationError("\n".join(problems))
    return parsed


def top_level_values(text: str) -> list[str]:
    """`1e-3,2e-3` -> ["1e-3", "2e-3"]; commas inside brackets or braces stay in their value, so a list or
    mapping is one value: `[28,29],null` -> ["[28,29]", "null"]."""
    values, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += (char in "[{") - (char in "]}")
        if char == "," and depth == 0:
            values.append(text[start:index])
            start = index + 1
    return [*values, text[start:]]


def grid(sets: Sequence[tuple[str, list[str]]], seeds: Sequence[int | None]) -> list[tuple[dict[str, str], int | None]]:
    """Every combination of the set values, each for every seed (a setting's seeds run together)."""
    keys = [key for key, _ in sets]
    combos = itertools.product(*(values for _, values in sets))
    return [(dict(zip(keys, combo)), seed) for combo in combos for seed in seeds]


def setting_folder(setting: dict[str, str]) -> str:
    """A folder name that says the setting: `learning_rate=1e-3_batch_size=2`; `default` for none."""
    name = "_".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in setting.items()) or "default"
    return re.sub(r"[^\w.=+-]", "-", name)


def fit_arguments(
    rest: Sequence[str], setting: dict[str, str], seed: int | None, folder: Path, evaluate_base: bool | None
) -> list[str]:
    """The `fit` options of one run: the shared ones, its setting and seed, and its own folder."""
    args = list(rest)
    for key, value in setting.items():
        args += [f"--{key}", value]
    if seed is not None:
        args += ["--seed_everything", str(seed)]
    if evaluate_base is not None:
        args += ["--model.evaluate_base", str(evaluate_base).lower()]
    return args + ["--trainer.default_root_dir", str(folder), "--trainer.logger.init_args.save_dir", str(folder)]


def check_arguments(all_args: Sequence[list[str]]) -> None:
    """Parse every run's options as `fit` would, before any run starts: a bad key or value fails now, once.

    `--print_config` makes LightningCLI stop after parsing, so nothing is built or trained.
    """
    from src.tools.runs import training_cli  # the training CLI's imports cost seconds: only when checking

    for args in all_args:
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                training_cli([*args, "--print_config"])
        except SystemExit as done:
            if done.code not in (0, None):
                raise ConfigurationError(f"compare: the options of a run were refused: {shlex.join(args)}") from None


# ----------------------------------------------------------------------------------------- finding runs
def newest_metrics(folder: Path) -> Path | None:
    """The newest `metrics.json` under `folder` (a re-run after a crash writes a new version folder)."""
    found = sorted(folder.rglob("metrics.json"), key=lambda path: path.stat().st_mtime)
    return found[-1] if found else None


def read_summary(path: Path) -> dict[str, Any]:
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ConfigurationError(f"{path}: not a readable metrics.json ({error}); remove it or the run's folder") from None
    if not isinstance(report, dict) or not isinstance(report.get("summary"), dict):
        raise ConfigurationError(f"{path}: expected the JSON object RunReport writes, with a 'summary' object")
    return report["summary"]


def saved_config(metrics: Path) -> dict[str, Any]:
    """The `config.yaml` LightningCLI saved for the run of `metrics` (in its log folder, at or above it)."""
    for folder in (metrics.parent, *metrics.parents):
        config = folder / "config.yaml"
        if config.is_file():
            loaded = yaml.safe_load(config.read_text(encoding="utf-8"))
            return loaded if isinstance(loaded, dict) else {}
    return {}


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """`{"model": {"lr": 1}}` -> `{"model.lr": "1"}`; lists and other values as compact JSON."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, str) else json.dumps(value)
    return flat


def differing_settings(configs: Sequence[dict[str, Any]]) -> list[dict[str, str]]:
    """For runs read with `--runs`: each run's values of the keys that differ between the runs.

    The seed and the run's own folders differ by design and are left out, so seeds of one setting group together.
    """
    flats = [flatten(config) for config in configs]
    keys = sorted({key for flat in flats for key in flat})
    varied = [
        key for key in keys
        if len({flat.get(key) for flat in flats}) > 1
        and not any(key == own or key.startswith(own + ".") for own in (*OWN_KEYS, "ckpt_path"))
    ]
    return [{key: flat.get(key, "—") for key in varied} for flat in flats]


def read_runs(folders: Sequence[str]) -> list[RunResult]:
    """The finished runs under `folders`: one per training run (the newest metrics.json of each)."""
    metrics_files: list[Path] = []
    for given in folders:
        folder = Path(given)
        if not folder.is_dir():
            raise ConfigurationError(f"--runs {given}: no such folder; give run folders that hold a metrics.json")
        found = sorted(folder.rglob("metrics.json"))
        if not found:
            raise ConfigurationError(f"--runs {given}: no metrics.json under it (a run writes it when its fit ends)")
        metrics_files += [path for path in found if path not in metrics_files]
    by_run: dict[Path, Path] = {}
    for path in metrics_files:  # a grid run's folder may hold versions from a crash and its re-run: newest wins
        owner = next((p for p in path.parents if (p / COMMAND_FILE).is_file()), path.parent)
        if owner not in by_run or path.stat().st_mtime > by_run[owner].stat().st_mtime:
            by_run[owner] = path
    configs = [saved_config(path) for path in by_run.values()]
    runs = []
    for (owner, path), config, setting in zip(by_run.items(), configs, differing_settings(configs)):
        recorded = _recorded_command(owner)
        seed = config.get("seed_everything")
        runs.append(RunResult(
            setting=recorded.get("setting", setting) if recorded else setting,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            folder=str(owner),
            command=recorded["command"] if recorded else _replay_command(path),
            summary=read_summary(path),
            commit=recorded.get("commit") if recorded else None,
            reused=True,
        ))
    return runs


def _recorded_command(folder: Path) -> dict[str, Any] | None:
    path = folder / COMMAND_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _replay_command(metrics: Path) -> list[str]:
    """For a run started by hand: the command that replays its saved config."""
    for folder in (metrics.parent, *metrics.parents):
        if (folder / "config.yaml").is_file():
            return ["python", "-m", "src.cli", "fit", "--config", str(folder / "config.yaml")]
    return ["(unknown: no config.yaml beside", str(metrics), ")"]


# ------------------------------------------------------------------------------------------ running
def run_fit(command: list[str], setting: dict[str, str], seed: int | None, folder: Path, commit: str | None) -> RunResult:
    """Train one run in a subprocess (its output in `fit.log`), or read it when it already finished."""
    result = RunResult(setting=setting, seed=seed, folder=str(folder), command=command, commit=commit)
    recorded = _recorded_command(folder)
    finished = newest_metrics(folder)
    if recorded is not None and recorded["command"] != command:
        raise ConfigurationError(
            f"{folder} holds a run of another command:\n  {shlex.join(recorded['command'])}\nnot\n  {shlex.join(command)}\n"
            "give another --output_dir, or remove that folder to train it again"
        )
    if recorded is not None and finished is not None:
        result.summary, result.commit, result.reused = read_summary(finished), recorded.get("commit"), True
        print(f"  finished before: {finished} (read, not re-run)", flush=True)
        return result
    folder.mkdir(parents=True, exist_ok=True)
    (folder / COMMAND_FILE).write_text(
        json.dumps({"command": command, "setting": setting, "seed": seed, "commit": commit}, indent=2) + "\n", encoding="utf-8"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    started = time.perf_counter()
    with (folder / LOG_FILE).open("w", encoding="utf-8") as log:
        code = subprocess.run([sys.executable, *command[1:]], stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    metrics = newest_metrics(folder)
    if code != 0 or metrics is None:
        why = f"exit code {code}" if code != 0 else "no metrics.json was written"
        result.failure = f"{why}; see {folder / LOG_FILE}"
        tail = (folder / LOG_FILE).read_text(encoding="utf-8", errors="replace").splitlines()[-5:]
        print(f"  failed ({why}) after {time.perf_counter() - started:.0f} s:\n    " + "\n    ".join(tail), flush=True)
        return result
    result.summary = read_summary(metrics)
    print(f"  done in {time.perf_counter() - started:.0f} s: {metrics}", flush=True)
    return result


def train_grid(options: argparse.Namespace, rest: list[str], commit: str | None) -> list[RunResult]:
    points = grid(parse_sets(options.sets), parse_seeds(options.seeds))
    output = Path(options.output_dir)
    chooses_base = any(arg.startswith("--model.evaluate_base") for arg in rest)
    all_args, first_of_setting = [], set()
    for setting, seed in points:
        # The base model answers greedily, so its accuracy does not depend on the seed: once per setting.
        label = tuple(setting.items())
        evaluate_base = None if chooses_base else label not in first_of_setting
        first_of_setting.add(label)
        folder = output / setting_folder(setting) / ("seed_default" if seed is None else f"seed_{seed}")
        all_args.append((setting, seed, folder, fit_arguments(rest, setting, seed, folder, evaluate_base)))
    check_arguments([args for *_, args in all_args])
    runs = []
    for index, (setting, seed, folder, args) in enumerate(all_args, 1):
        print(f"compare: run {index}/{len(all_args)}: seed {seed}, {setting or 'the config as given'} -> {folder}", flush=True)
        runs.append(run_fit(["python", "-m", "src.cli", "fit", *args], setting, seed, folder, commit))
    return runs


# ------------------------------------------------------------------------------------------ the machine
def cpu_kind(cpuinfo: Path | None = None) -> str:
    """`AVX512-BF16`, `AVX2-only` or `no AVX2`, from the CPU's own flags (the numbers depend on it)."""
    flags = cpu_flags() if cpuinfo is None else cpu_flags(cpuinfo)
    if not flags:
        return "unknown (no /proc/cpuinfo)"
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return "AVX512-BF16"
    return "AVX2-only" if "avx2" in flags else "no AVX2"


def git_state(folder: Path = ROOT) -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it); (None, None) outside a git checkout."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, bool(status.strip())


def main(argv: Sequence[str]) -> int:
    options, rest = tool_options(argv)
    if options.runs and (options.sets or options.seeds):
        raise ConfigurationError("--runs reads finished runs: give it alone (without --seeds/--set), or train with --seeds/--set")
    commit, dirty = git_state()
    runs = read_runs(options.runs) if options.runs else train_grid(options, rest, commit)
    context = Context(
        date=time.strftime("%Y-%m-%d %H:%M %Z"),
        cpu_kind=cpu_kind(),
        cpu_cores=os.cpu_count(),
        commit=commit[:12] if commit else None,
        dirty=dirty,
        command=["python", "-m", "src.cli", "compare", *argv],
        notes=[f"run {run.folder} was trained at commit {run.commit[:12]}" for run in runs if run.commit and run.commit != commit],
    )
    data = comparison(runs, context)
    out = Path(options.out) if options.out else Path(options.output_dir) / "comparison"
    out.parent.mkdir(parents=True, exist_ok=True)
    page = markdown(data, title=f"Comparison: {out.name}")
    md, js = out.parent / f"{out.name}.md", out.parent / f"{out.name}.json"
    md.write_text(page, encoding="utf-8")
    js.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(page)
    print(f"Written: {md}, {js}")
    failed = [run for run in runs if run.summary is None]
    return 1 if failed else 0
