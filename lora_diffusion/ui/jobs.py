"""Training from the web UI: uploads into a data folder, one background run at a time, live progress.

A page-started run gets the same derived plan as ``lora-diffusion train`` on the same data (the page's fields
default to "auto"); the plan is shown before the run starts (``preview``) and again as derived once the base has
loaded. The page polls ``TrainingJob.snapshot()``; the trainer reports through its callbacks and stops between
steps when ``stop()`` is called (it then writes what it has, like the CLI does).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..data.images import IMAGE_EXTENSIONS
from ..errors import UserError
from ..training.config import TrainConfig
from ..training.plan_preview import preview_plan
from .library import LoraLibrary

SAMPLES_PER_RUN = 4  # validation grids over a page-started run: the Train tab's gallery and the preview card
MAX_UPLOAD_FILES = 2000
MAX_UNZIPPED_BYTES = 2 * 1024**3  # a zip may not expand beyond this (zip-bomb guard)
MAX_ZIP_RATIO = 100  # unpacked/packed above this (and MIN_SUSPECT_BYTES) is filler, not images
MIN_SUSPECT_BYTES = 16 * 1024**2
DISK_RESERVE_BYTES = 1024**3  # an upload never leaves less than this free on the disk
CAPTION_SUFFIXES = {".txt", ".caption"}


def prepare_data(uploads: list[str], folder: str, target: Path) -> Path:
    """The folder to train on: ``folder`` as given, or ``target`` filled from uploaded files and zips."""
    if folder.strip():
        data = Path(folder.strip()).expanduser()
        if not data.is_dir():
            raise UserError(f"image folder {folder!r} does not exist; give an existing folder or upload images")
        return data
    if not uploads:
        raise UserError("no training images: upload images (or a .zip of them) or give a folder")
    if len(uploads) > MAX_UPLOAD_FILES:
        raise UserError(f"{len(uploads)} files uploaded; at most {MAX_UPLOAD_FILES} per run")
    target.mkdir(parents=True, exist_ok=True)
    for upload in uploads:
        source = Path(upload)
        suffix = source.suffix.lower()
        if suffix == ".zip":
            _unzip(source, target)
        elif suffix in IMAGE_EXTENSIONS or suffix in CAPTION_SUFFIXES:
            shutil.copyfile(source, target / _safe_member_name(source.name))
        else:
            raise UserError(f"{source.name}: not an image, caption (.txt) or .zip file")
    return target


def _safe_member_name(name: str) -> str:
    """A flat file name: folders inside zips are dropped so nothing can be written outside ``target``."""
    base = Path(name.replace("\\", "/")).name
    if not base or base.startswith("."):
        raise UserError(f"file name {name!r} is not usable; rename it")
    return base


def _unzip(source: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(source) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            unpacked = sum(m.file_size for m in members)
            if unpacked > MAX_UNZIPPED_BYTES:
                raise UserError(f"{source.name}: unpacks to more than {MAX_UNZIPPED_BYTES // 1024**3} GB; upload fewer images")
            packed = sum(m.compress_size for m in members)
            if unpacked > MIN_SUSPECT_BYTES and unpacked > MAX_ZIP_RATIO * max(packed, 1):
                # images hardly compress (PNG and JPEG are compressed already): 100:1 is filler, not photos
                raise UserError(f"{source.name}: unpacks {unpacked // packed if packed else unpacked}× larger than it is; "
                                "that is not a zip of images (zip the image files themselves)")
            free = shutil.disk_usage(target).free
            if unpacked > free - DISK_RESERVE_BYTES:
                raise UserError(f"{source.name}: unpacks to {unpacked / 1e9:.1f} GB but the disk has "
                                f"{max(free - DISK_RESERVE_BYTES, 0) / 1e9:.1f} GB to spare; free some space first")
            for member in members:
                name = Path(member.filename.replace("\\", "/")).name
                suffix = Path(name).suffix.lower()
                if name.startswith(".") or (suffix not in IMAGE_EXTENSIONS and suffix not in CAPTION_SUFFIXES):
                    continue  # __MACOSX files, thumbs, notes: not training data
                with archive.open(member) as src, open(target / name, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile:
        raise UserError(f"{source.name}: not a valid zip file") from None


@dataclass
class JobState:
    """What the Train tab shows; a copy is handed out so the page never sees a half-updated one."""

    status: str = "idle"  # idle, running, stopping, done, stopped, failed
    name: str = ""
    step: int = 0
    steps: int = 0
    loss: float | None = None
    started: float = 0.0
    eta_s: float | None = None
    message: str = ""
    plan: str = ""  # the printed plan block: previewed at the start, then as derived when the base loaded
    samples: list[str] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) of every finished step
    val_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out loss) where evaluated


class TrainingJob:
    """At most one training run at a time, in a background thread."""

    def __init__(self, library: LoraLibrary, work_dir: str | os.PathLike | None = None):
        self.library = library
        self.work_dir = Path(work_dir) if work_dir else library.folder / ".training"
        # uploads live outside work_dir: the page serves work_dir's samples, and must never serve one client's
        # training images to another
        self.upload_dir = self.work_dir.parent / f".{self.work_dir.name.lstrip('.')}-uploads"
        self._state = JobState()
        self._first: tuple[int, float] | None = None  # (step, elapsed s) of the run's first step: the ETA's origin
        self._finishing = "saving the LoRA"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # held from the busy check until the thread runs, so two starts cannot both pass the check
        self._starting = threading.Lock()

    @property
    def busy(self) -> bool:
        return self._starting.locked() or (self._thread is not None and self._thread.is_alive())

    def snapshot(self) -> JobState:
        with self._lock:
            state = JobState(**vars(self._state))
            state.samples = list(self._state.samples)
            state.losses = list(self._state.losses)
            state.val_losses = list(self._state.val_losses)
        logs = self.work_dir / state.name / f"{state.name}-logs" / "samples"
        if state.name and logs.is_dir():
            state.samples = [str(p) for p in sorted(logs.glob("*.png"))]
        return state

    def start(self, name: str, cfg: TrainConfig, uploads: list[str], folder: str) -> None:
        """Validate everything, then train in the background; errors before the start raise UserError.

        Two starts at once (two tabs, two clients) give one run and one refusal: the slot is taken before the
        uploads are copied, not after."""
        if not self._starting.acquire(blocking=False):
            raise UserError("a training run is already starting; wait for it or press Stop")
        try:
            if self._thread is not None and self._thread.is_alive():
                raise UserError("a training run is already going; wait for it or press Stop")
            self._start_locked(name, cfg, uploads, folder)
        finally:
            self._starting.release()

    def _start_locked(self, name: str, cfg: TrainConfig, uploads: list[str], folder: str) -> None:
        final = self.library.path(name, must_exist=False)
        if final.exists():
            raise UserError(f"a LoRA named {final.stem!r} already exists; choose another name")
        job_dir = self.work_dir / final.stem
        upload_dir = self.upload_dir / final.stem
        for stale in (job_dir, upload_dir):
            if stale.exists():
                shutil.rmtree(stale)
        try:
            cfg.data = "" if cfg.dataset_config else str(prepare_data(uploads, folder, upload_dir))
            cfg.output = str(job_dir / final.name)
            plan, text = preview_plan(cfg)
        except BaseException:
            shutil.rmtree(upload_dir, ignore_errors=True)  # a refused start keeps none of the uploads
            raise
        steps = plan.config.steps if plan else cfg.steps
        if not cfg.sample_every and steps:
            cfg.sample_every = max(1, steps // SAMPLES_PER_RUN)
        self._stop.clear()
        with self._lock:
            self._state = JobState(status="running", name=final.stem, steps=steps or 0, started=time.time(),
                                   message="loading the base model", plan=text)
        self._thread = threading.Thread(target=self._run, args=(cfg, final), name="lora-training", daemon=True)
        self._thread.start()

    def preview(self, cfg: TrainConfig, uploads: list[str], folder: str) -> str:
        """The plan ``start`` would train with, as printed (uploads are unpacked to count them, then removed)."""
        import tempfile

        self.upload_dir.mkdir(parents=True, exist_ok=True)
        # a folder of its own per request: two pages previewing at once never delete each other's files
        target = Path(tempfile.mkdtemp(prefix=".preview-", dir=self.upload_dir))
        try:
            cfg.data = "" if cfg.dataset_config else str(prepare_data(uploads, folder, target))
            cfg.output = str(self.work_dir / "preview.safetensors")  # nothing is written; the plan needs a name
            return preview_plan(cfg)[1]
        finally:
            shutil.rmtree(target, ignore_errors=True)

    def stop(self) -> None:
        if self.busy:
            self._stop.set()
            with self._lock:
                self._state.status = "stopping"
                self._state.message = "stopping after this step; the LoRA so far will be saved"

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _on_step(self, record: dict) -> None:
        with self._lock:
            step, steps = int(record["step"]), int(record["steps"])
            self._state.step = step
            self._state.loss = record["loss"]
            self._state.losses.append((step, float(record["loss"])))
            if record.get("val_loss") is not None:
                self._state.val_losses.append((step, float(record["val_loss"])))
            self._state.eta_s = self._eta(step, steps, record["elapsed"])
            if self._state.status != "running":
                return
            if step >= steps:  # the bar is full, but the file (and the final validation images) are still coming
                self._state.message = self._finishing
            else:
                self._state.message = "training" if self._state.eta_s is not None else "training (timing the steps)"

    def _eta(self, step: int, steps: int, elapsed: float) -> float | None:
        """Seconds to go from the pace since the first step (the start-up and first step are slow and one-off); None
        until a second step gives a pace."""
        if self._first is None or step <= self._first[0]:
            self._first = (step, elapsed)
            return None
        per_step = (elapsed - self._first[1]) / (step - self._first[0])
        return per_step * (steps - step)

    def _on_plan(self, plan, text: str) -> None:
        with self._lock:
            self._state.steps = plan.config.steps
            self._state.plan = text

    def _run(self, cfg: TrainConfig, final: Path) -> None:
        from ..training.trainer import TrainCallbacks, train

        self._first = None
        self._finishing = "last step done: saving the LoRA" + (
            " and drawing the final validation images" if cfg.sample_every else "")
        try:
            callbacks = TrainCallbacks(on_plan=self._on_plan, on_step=self._on_step, should_stop=self._stop.is_set)
            result = train(cfg, progress=False, callbacks=callbacks)
            os.replace(result.output, final)
            samples = sorted((Path(cfg.output).parent / f"{final.stem}-logs" / "samples").glob("*.png"),
                             key=lambda p: (p.name == "final.png", p.name))
            if samples:  # the last validation image becomes the LoRA's preview card
                self.library.set_preview(final.stem, samples[-1])
            stopped = self._stop.is_set()
            with self._lock:
                self._state.status = "stopped" if stopped else "done"
                self._state.eta_s = 0.0
                self._state.message = (
                    f"{'stopped early; ' if stopped else ''}saved {final.name} to the library after {result.steps} steps"
                )
        except UserError as error:
            self._fail(str(error))
        except Exception as error:  # noqa: BLE001 - the page shows a message, the log keeps the trace
            traceback.print_exc()
            self._fail(f"unexpected {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")
        finally:
            # the uploads were copied for this run only: each run left hundreds of MB behind
            uploaded = self.upload_dir / final.stem
            if Path(cfg.data) == uploaded:
                shutil.rmtree(uploaded, ignore_errors=True)

    def _fail(self, message: str) -> None:
        with self._lock:
            self._state.status = "failed"
            self._state.message = message
