"""Five-rat hippocampus (MM-VAMP §5.3, App. B.4; Figs. 5, 6, 13): CA1 spikes of five rats, one modality per rat.

Source: the Dryad deposit of Shahbaba et al. (2022), doi:10.7280/D14X30 (CC0), per rat
``<rat>_spike_data_binned.npy`` (float64 trials × neurons × 400: 10-ms bins from -2 s to +2 s around
port entry, so bin 200 = port entry; value = spikes in the bin / 10) and ``<rat>_trial_info.npy``
(float64 trials × 9: performance, in-sequence, position, odor 1..5, trial, sequence, poke duration,
transposition distance, item distance). No stable URL of the deposit's files is known (their list
could not be retrieved from Dryad), so there is no download: fetch the deposit from its landing
page, unpack it anywhere and pass ``--source DIR`` (files are found in sub-folders too; rat names
match case-insensitively, e.g. ``SuperChris_trial_info.npy``). Beware of the copies once committed to
GitHub (kwcooper/neuro_replay) under the same names: those are aligned to poke-out, not port entry.

Recipe (the authors' code, yangmeng96/mmvmvae-hippocampal utils/RatsDataset.py class SPIKE):

* windows: 250 ms starting 250/250/500/500/250 ms after port entry for Barat, Buchanan, Mitt,
  Stella, SuperChris (bins 225/225/250/250/225), cut into 100-ms sub-windows at 10-ms steps: 16
  per trial; a sample is one sub-window, neurons × 10 bins (92/79/104/49/46 neurons);
* odors A-D only (E is dropped); label = odor 0..3;
* pairing: for odor l, n_l = the fewest such trials over the rats; sample (l, k, t) of every rat
  is that rat's k-th odor-l trial (file order) at sub-window t, so odor and time offset are
  aligned across rats;
* stored as uint8 spike counts per bin (N × neurons × 10), loaded as count / 10 (the deposit's
  unit; no normalisation, as the authors); extra labels ``trial`` (paired trial) and ``window``.

Prepare options (``-o key=value``):

* ``trials``: ``all`` (default; the authors' code never reads the correct/in-sequence columns:
  153 paired trials, 2,448 samples) or ``correct_in_sequence`` (the standard filter of Shahbaba et
  al.: 133 trials);
* ``split``: ``held_out`` (default for new results: a seeded 20 % of the paired trials of each odor,
  all 16 sub-windows of a trial on the same side) or ``in_sample`` (the authors' protocol: train
  = test = every trial, so test metrics are in-sample);
* ``trial_info`` (variant ``simulated`` only): a directory of the five ``<rat>_trial_info.npy``.

Variant ``simulated`` (``mmbench prepare rats --simulate``) first writes a stand-in deposit into
``<data_root>/raw/rats-simulated/``: the same file names, dtypes, shapes and trial_info columns
(the LFP and behaviour files, which the recipe does not read, are not written), with the
``trial_info`` tables given or, without them, synthetic ones with the real trial counts; spikes are
Poisson with rates that depend on the odor through a code shared by all rats and a per-rat random
mixing, peaking inside each rat's window. Then the recipe above reads it like a real deposit. The
manifest says ``"simulated": true``; results on it say nothing about real rats.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import MMBenchError
from ..registry import DATASETS
from .base import DatasetSpec, Modality, build_write_error
from .download import file_digest

DRYAD = "https://datadryad.org/stash/dataset/doi:10.7280/D14X30"
RATS = ("barat", "buchanan", "mitt", "stella", "superchris")  # modality order m0..m4 of the authors' code
FOLDERS = {"barat": "Barat", "buchanan": "Buchanan", "mitt": "Mitt", "stella": "Stella", "superchris": "SuperChris"}
NEURONS = {"barat": 92, "buchanan": 79, "mitt": 104, "stella": 49, "superchris": 46}  # input dims / 10 (mmvmvae-hippocampal original_dims)
START_MS = {"barat": 250, "buchanan": 250, "mitt": 500, "stella": 500, "superchris": 250}  # MM-VAMP App. B.4
REAL_TRIALS = {"barat": 176, "buchanan": 270, "mitt": 292, "stella": 222, "superchris": 240}  # trial_info rows (kwcooper/neuro_replay computedData)
BIN_MS, N_BINS, ENTRY_BIN = 10, 400, 200  # bin 0 starts 2 s before port entry
WINDOW_BINS, SUB_BINS = 25, 10  # 250-ms window, 100-ms sub-windows
N_SUB = WINDOW_BINS - SUB_BINS + 1  # 16 sub-windows per trial at 10-ms steps (App. B.4)
ODORS = "ABCD"
TRIAL_COLUMNS = ("performance", "in_sequence", "position", "odor", "trial", "sequence", "poke_duration",
                 "transposition", "item_distance")
FILTERS = ("all", "correct_in_sequence")
SPLITS = ("held_out", "in_sample")
TEST_FRACTION = 0.2
KINDS = ("spike_data_binned", "trial_info")


def start_bin(rat: str) -> int:
    return ENTRY_BIN + START_MS[rat] // BIN_MS


# ----- reading a deposit -------------------------------------------------------------------------------------
def find_deposit(source: Path) -> Dict[str, Dict[str, Path]]:
    """The ten files the recipe reads, found anywhere under `source`, names matched case-insensitively."""
    source = Path(source)
    if not source.is_dir():
        raise MMBenchError(f"--source {source} is not a directory; pass the folder where you unpacked the deposit")
    wanted = {f"{rat}_{kind}.npy": (rat, kind) for rat in RATS for kind in KINDS}
    found: Dict[str, Dict[str, Path]] = {rat: {} for rat in RATS}
    for path in sorted(source.rglob("*")):
        key = wanted.get(path.name.lower())
        if key is None or not path.is_file():
            continue
        rat, kind = key
        if kind in found[rat]:
            raise MMBenchError(f"two copies of {path.name.lower()} under {source} ({found[rat][kind]} and {path}); "
                               f"keep one")
        found[rat][kind] = path
    missing = [f"{rat}_{kind}.npy" for rat in RATS for kind in KINDS if kind not in found[rat]]
    if missing:
        raise MMBenchError(f"{', '.join(missing)} not found under {source} (names match case-insensitively); "
                           f"unpack the Dryad deposit doi:10.7280/D14X30 there, or prepare with --simulate")
    return found


def read_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise MMBenchError(f"{path} is not a readable .npy array ({reason}); replace it with an intact copy "
                           f"from the deposit") from None


def check_trial_info(table: np.ndarray, path: Any) -> np.ndarray:
    """A trial_info table as the deposit's: trials × 9, odor 1..5, 0/1 performance and in-sequence flags."""
    if table.ndim != 2 or table.shape[1] != len(TRIAL_COLUMNS) or not np.issubdtype(table.dtype, np.number):
        raise MMBenchError(f"{path}: expected a numeric trials × {len(TRIAL_COLUMNS)} trial_info table "
                           f"({', '.join(TRIAL_COLUMNS)}), got {table.dtype} {table.shape}")
    odor = table[:, 3]
    if not (np.isin(odor, [1, 2, 3, 4, 5]).all() and np.isin(table[:, :2], [0, 1]).all()):
        raise MMBenchError(f"{path}: odor (column 4) must be 1..5 and performance/in-sequence (columns 1-2) 0 or 1")
    return np.asarray(table, np.float64)


def read_trial_info(path: Path) -> np.ndarray:
    return check_trial_info(read_npy(path), path)


def kept_trials(table: np.ndarray, odor: int, trials: str = "all") -> np.ndarray:
    """The indices (file order) of a rat's trials of `odor` (1..5) that the `trials` filter keeps."""
    mask = table[:, 3] == odor
    if trials == "correct_in_sequence":  # Shahbaba et al.'s filter; not in the MM-VAMP code
        mask &= (table[:, 0] == 1) & (table[:, 1] == 1)
    return np.flatnonzero(mask)


def pair_trials(tables: Dict[str, np.ndarray], trials: str = "all") -> List[Dict[str, np.ndarray]]:
    """Per odor A-D, the indices (file order) of each rat's first n_l kept trials, n_l = min over rats."""
    out = []
    for odor in range(1, len(ODORS) + 1):
        kept = {rat: kept_trials(tables[rat], odor, trials) for rat in RATS}
        n = min(len(v) for v in kept.values())
        out.append({rat: v[:n] for rat, v in kept.items()})
    return out


def to_counts(values: np.ndarray, where: str) -> np.ndarray:
    """The deposit's spikes-per-bin / 10 values as uint8 counts; refuses values that are not."""
    counts = np.rint(values * 10.0)
    if not np.isfinite(values).all() or np.abs(values * 10.0 - counts).max(initial=0) > 1e-6 \
            or counts.min(initial=0) < 0 or counts.max(initial=0) > 255:
        raise MMBenchError(f"{where}: values are not spike counts / 10 (0, 0.1, 0.2, ...) as in the deposit's "
                           f"spike_data_binned; is this the right file?")
    return counts.astype(np.uint8)


def cut_windows(spikes: np.ndarray, trials: np.ndarray, start: int, where: str = "spikes") -> np.ndarray:
    """uint8 (len(trials)·16) × neurons × 10: trial-major, sub-window t = bins start+t .. start+t+9 (App. B.4)."""
    seg = to_counts(np.asarray(spikes[trials, :, start:start + WINDOW_BINS], np.float64), where)
    win = np.lib.stride_tricks.sliding_window_view(seg, SUB_BINS, axis=2)  # k × n × 16 × 10
    return np.ascontiguousarray(win.transpose(0, 2, 1, 3)).reshape(-1, seg.shape[1], SUB_BINS)


def split_trials(labels: np.ndarray, split: str, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test trial indices: every trial in both (in_sample) or a seeded per-odor 20 % held out."""
    everything = np.arange(len(labels))
    if split == "in_sample":
        return everything, everything
    rng = np.random.default_rng([seed, 2])
    test = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        n_test = max(1, int(round(TEST_FRACTION * len(idx)))) if len(idx) > 1 else 0  # a lone trial trains
        test.append(rng.permutation(idx)[:n_test])
    test = np.sort(np.concatenate(test))
    return np.setdiff1d(everything, test), test


# ----- the simulator -----------------------------------------------------------------------------------------
def synthetic_trial_info(n_trials: int, rng: np.random.Generator) -> np.ndarray:
    """A trial_info table with the deposit's columns: sequences A, B, C, ... with ~12 % out-of-sequence
    items (never at position 1), ~90 % correct, a sequence ending after an error or at position 5."""
    rows = []
    seq, pos = 0, 0
    while len(rows) < n_trials:
        if pos == 0:
            seq, pos = seq + 1, 1
        odor = pos if pos == 1 or rng.random() > 0.12 else int(rng.choice([o for o in range(1, 6) if o != pos]))
        correct = float(rng.random() < 0.9)
        in_seq = float(odor == pos)
        hold = in_seq == correct  # a correct in-sequence answer holds the poke past 1 s; out-of-sequence withdraws
        duration = float(np.clip(rng.normal(1.27, 0.2) if hold else rng.normal(0.6, 0.2), 0.05, 2.6))
        rows.append([correct, in_seq, pos, odor, len(rows) + 1, seq, duration, pos - odor, 1 - (pos - odor)])
        pos = 0 if (not correct or pos == 5) else pos + 1
    return np.array(rows, np.float64)


def simulate_spikes(table: np.ndarray, rat: str, codes: np.ndarray, rng: np.random.Generator,
                    gain: float = 1.2) -> np.ndarray:
    """float64 trials × neurons × 400 spike counts / 10 (the deposit's unit), Poisson, at most 10 per bin.

    log rate = baseline_i + gain · bump(t) · (W_rat · code_odor)_i + trial noise; `codes` is shared by all
    rats, W_rat is this rat's random mixing and bump(t) peaks in the middle of this rat's window.
    """
    n = NEURONS[rat]
    baseline = rng.normal(0.0, 1.0, n)  # log Hz: ~1 Hz median, sparse like CA1 (about 1-2 Hz on average)
    mixing = rng.normal(0.0, 1.0, (n, codes.shape[1])) / np.sqrt(codes.shape[1])
    t_ms = (np.arange(N_BINS) - ENTRY_BIN + 0.5) * BIN_MS
    bump = np.exp(-0.5 * ((t_ms - (START_MS[rat] + WINDOW_BINS * BIN_MS / 2)) / 150.0) ** 2)
    drive = codes[table[:, 3].astype(int) - 1] @ mixing.T  # trials × neurons
    out = np.empty((len(table), n, N_BINS), np.float64)
    for s in range(0, len(table), 64):  # chunks bound the memory of the rate tensor
        d = drive[s:s + 64]
        noise = rng.normal(0.0, 0.2, d.shape)
        log_rate = baseline[None, :, None] + gain * d[:, :, None] * bump + noise[:, :, None]
        counts = np.minimum(rng.poisson(np.exp(log_rate) * (BIN_MS / 1000.0)), 10)
        out[s:s + 64] = counts / 10.0
    return out


def simulate_deposit(directory: Path, tables: Dict[str, np.ndarray], seed: int,
                     progress: Callable[[str, int, int], None] = lambda *a: None) -> None:
    """Write `<Rat>/<Rat>_spike_data_binned.npy` and `<Rat>_trial_info.npy` for the five rats (seeded)."""
    if directory.exists():
        shutil.rmtree(directory)
    rng = np.random.default_rng([seed, 1])
    codes = rng.normal(0.0, 1.0, (5, 4))  # one shared 4-d code per odor A-E
    for i, rat in enumerate(RATS):
        folder = directory / FOLDERS[rat]
        folder.mkdir(parents=True)
        for path, array in ((folder / f"{FOLDERS[rat]}_trial_info.npy", tables[rat]),
                            (folder / f"{FOLDERS[rat]}_spike_data_binned.npy", simulate_spikes(tables[rat], rat, codes, rng))):
            try:
                np.save(path, array)
            except OSError as e:  # numpy's short write (a full disk) names no file
                raise build_write_error(path, e) from None
        progress("rats simulate", i + 1, len(RATS))


def trial_info_files(directory: str) -> Dict[str, Path]:
    """The five `<rat>_trial_info.npy` of `-o trial_info=DIR`, by rat (names match case-insensitively)."""
    d = Path(directory).expanduser()
    if not d.is_dir():
        raise MMBenchError(f"option trial_info={directory} is not a directory of <rat>_trial_info.npy files")
    names = {p.name.lower(): p for p in d.iterdir() if p.is_file()}
    missing = [f"{rat}_trial_info.npy" for rat in RATS if f"{rat}_trial_info.npy" not in names]
    if missing:
        raise MMBenchError(f"{', '.join(missing)} not in trial_info={directory} (names match case-insensitively)")
    return {rat: names[f"{rat}_trial_info.npy"] for rat in RATS}


def trial_info_digests(files: Dict[str, Path]) -> Dict[str, str]:
    """The sha256 of each rat's trial_info file: a simulated copy's record of its tables (build, changed_inputs)."""
    return {rat: file_digest(path, "sha256") for rat, path in files.items()}


def trial_tables(directory: Optional[str], seed: int) -> Tuple[Dict[str, np.ndarray], Any]:
    """The simulator's trial_info tables and where they came from: the five files in `directory` (their sha256 by
    rat: the copy's identity is their content, not where they were), or synthetic ones ("synthetic")."""
    if not directory:
        rng = np.random.default_rng([seed, 3])
        return {rat: synthetic_trial_info(REAL_TRIALS[rat], rng) for rat in RATS}, "synthetic"
    files = trial_info_files(directory)
    return {rat: read_trial_info(path) for rat, path in files.items()}, trial_info_digests(files)


@DATASETS.register("rats")
class Rats(DatasetSpec):
    """Five-rat hippocampal spikes, one modality per rat, odors A-D (MM-VAMP §5.3); deposit via --source, or --simulate."""

    variants = ("deposit", "simulated")
    recipe_version = 1
    n_classes = len(ODORS)
    default_architecture = "rat_mlp"
    classifier_architecture = "rat_clf"
    classifier_batch_size = 128  # the per-rat classifiers' batch (mmvampvae config/MyClfRatsConfig.py ModelConfig)
    option_names = {
        "source": "directory with the Dryad deposit's <rat>_spike_data_binned.npy and <rat>_trial_info.npy",
        "trials": "all (the authors' code; default) or correct_in_sequence",
        "split": "held_out (20 % of the paired trials per odor as test; default) or in_sample (train = test, "
                 "the authors' protocol)",
        "trial_info": "simulated variant: directory of the five <rat>_trial_info.npy to simulate on (default: synthetic)",
    }
    # where the files are, not what is built: trial_info's tables are part of a simulated copy's identity by their
    # content (changed_inputs), so the same tables elsewhere are the same copy and no path reaches a report
    option_defaults = {"trials": "all", "split": "held_out"}
    location_options = ("source", "trial_info")
    needs = {"deposit": "--source DIR"}  # the Dryad deposit has no stable file URL (build)

    def modalities(self, variant: str) -> List[Modality]:
        # Summed squared error per rat, unweighted sum over rats (mmvmvae-hippocampal mv_vaes/spike_vae.py).
        return [Modality(rat, (NEURONS[rat], SUB_BINS), "spikes", "sse", 1.0) for rat in RATS]

    def changed_inputs(self, manifest: Dict[str, Any], options: Dict[str, Any]) -> Optional[str]:
        """--source naming a deposit whose files differ from those the copy was read from (their sha256, recorded by
        file), or -o trial_info=DIR naming other tables than a simulated copy was built from (or tables where it
        simulated synthetic ones); without the option the copy is used as it is."""
        if manifest.get("variant") == "deposit":
            read = {k.lower(): v for k, v in ((manifest.get("source") or {}).get("files") or {}).items()}
            if not options.get("source") or not read:
                return None
            now = {f"{rat}/{p.name}".lower(): file_digest(p, "sha256")
                   for rat, files in find_deposit(Path(options["source"])).items() for p in files.values()}
            differ = sorted(k for k in now if now[k] != read.get(k))
            return (f"--source {options['source']} holds other files than the copy was read from (sha256 differs for "
                    f"{', '.join(differ)})") if differ else None
        if not options.get("trial_info"):
            return None
        built = (manifest.get("simulator") or {}).get("trial_info")
        now = trial_info_digests(trial_info_files(options["trial_info"]))
        if now == built:
            return None
        if built == "synthetic":
            return f"trial_info={options['trial_info']} gives recorded trial tables, the copy simulated synthetic ones"
        if not isinstance(built, dict):  # a copy simulated before the tables' content was recorded: only their folder
            return (f"the copy was simulated before mmbench recorded its trial tables' content (only their folder, "
                    f"{built}), so trial_info={options['trial_info']} cannot be checked against it")
        return (f"trial_info={options['trial_info']} holds other tables than the copy was simulated on (sha256 differs "
                f"for {', '.join(rat for rat in RATS if now.get(rat) != built.get(rat))})")

    def check_options(self, variant: str, options: Dict[str, Any]) -> None:
        trials, split = str(options.get("trials", "all")), str(options.get("split", "held_out"))
        if trials not in FILTERS:
            raise MMBenchError(f"option trials={trials} is not allowed; choose one of: {', '.join(FILTERS)}")
        if split not in SPLITS:
            raise MMBenchError(f"option split={split} is not allowed; choose one of: {', '.join(SPLITS)}")

    def build(self, out, variant: str, seed: int, options: Dict[str, Any],
              progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        trials, split = str(options.get("trials", "all")), str(options.get("split", "held_out"))
        extra: Dict[str, Any] = {"simulated": variant == "simulated"}
        if variant == "simulated":
            if options.get("source"):
                raise MMBenchError("the simulated variant reads no deposit; drop --source / -o source (pass recorded trial tables "
                                   "with -o trial_info=DIR)")
            tables, origin = trial_tables(options.get("trial_info"), seed)
            source = out.raw_root / "rats-simulated"
            simulate_deposit(source, tables, seed, progress)
            extra["simulator"] = {"trial_info": origin, "spikes": "Poisson; odor code shared across rats, per-rat mixing"}
        else:
            if options.get("trial_info"):
                raise MMBenchError("option trial_info is for the simulated variant; the deposit has its own tables")
            if not options.get("source"):
                raise MMBenchError(f"the rat deposit (doi:10.7280/D14X30) has no stable file URL; download it from "
                                   f"{DRYAD}, unpack it and pass --source DIR (or try `mmbench prepare rats --simulate`)")
            source = Path(options["source"])
        files = find_deposit(source)
        tables = {rat: read_trial_info(files[rat]["trial_info"]) for rat in RATS}
        paired = pair_trials(tables, trials)
        per_odor = [len(p[RATS[0]]) for p in paired]
        if min(per_odor) == 0:
            odor = per_odor.index(0)
            rat = next(r for r in RATS if not len(kept_trials(tables[r], odor + 1, trials)))
            which = "" if trials == "all" else "correct in-sequence "
            raise MMBenchError(f"{files[rat]['trial_info']} has no {which}trial of odor {ODORS[odor]}, so odor "
                               f"{ODORS[odor]} has no paired trial (paired trials per odor: {per_odor}); every rat needs "
                               f"trials of each odor A-D: is this the deposit's {rat}_trial_info.npy?")
        labels = np.repeat(np.arange(len(ODORS)), per_odor)  # one label per paired trial, odor-major
        train_t, test_t = split_trials(labels, split, seed)
        rows = {s: (t[:, None] * N_SUB + np.arange(N_SUB)).reshape(-1) for s, t in (("train", train_t), ("test", test_t))}
        for i, rat in enumerate(RATS):
            path = files[rat]["spike_data_binned"]
            spikes = read_npy(path, mmap=True)
            expected = (len(tables[rat]), NEURONS[rat], N_BINS)
            if spikes.shape != expected:
                raise MMBenchError(f"{path}: shape {spikes.shape}, expected {expected} (trials of its trial_info × "
                                   f"{NEURONS[rat]} neurons × {N_BINS} bins)")
            if not np.issubdtype(spikes.dtype, np.floating):  # integer counts would pass as counts / 10 (ten times more)
                raise MMBenchError(f"{path}: a {spikes.dtype} array, expected float spike counts / 10 (0, 0.1, 0.2, ...) "
                                   f"as the deposit's float64 spike_data_binned; is this the right file?")
            idx = np.concatenate([p[rat] for p in paired])
            windows = cut_windows(spikes, idx, start_bin(rat), str(path))
            for s in ("train", "test"):
                out.write(f"{s}_{rat}", windows[rows[s]])
            progress("rats windows", i + 1, len(RATS))
        for s, t in (("train", train_t), ("test", test_t)):
            out.write(f"{s}_labels", np.repeat(labels[t], N_SUB).astype(np.int64))
            out.write(f"{s}_extra_trial", np.repeat(t, N_SUB).astype(np.int64))
            out.write(f"{s}_extra_window", np.tile(np.arange(N_SUB), len(t)).astype(np.int64))
        extra.update({
            "counts": {"train": int(len(rows["train"])), "test": int(len(rows["test"]))},
            "paired_trials_per_odor": dict(zip(ODORS, per_odor)),
            "protocol": {"trials": trials, "split": split, "test_fraction": TEST_FRACTION if split == "held_out" else None},
            "windows_ms_after_port_entry": {rat: [START_MS[rat], START_MS[rat] + WINDOW_BINS * BIN_MS] for rat in RATS},
            "source": {"doi": "10.7280/D14X30", "files": {
                f"{rat}/{p.name}": file_digest(p, "sha256") for rat in RATS for p in files[rat].values()}},
        })
        return extra
