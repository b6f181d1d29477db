"""``make convert`` end to end: convert, compile, verify, gate, write bundles and reports.

Output folder (default ``models/<run name>/``)::

    float32/ float16/ dynamic/ int8/ edgetpu/   one model bundle per variant
    verification.json  verification.md        the gate's figures

float32 is always built: it is the reference of the gate (kept in a temporary folder when it
was not asked for). int8 is built whenever edgetpu is asked for: it is the compiler's input.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from conversion import edgetpu as etpu
from conversion.bundle import is_bundle, now_iso, update_manifest, write_bundle
from conversion.data import (
    CalibrationSet,
    DataPlan,
    images_in,
    plan_from_folder,
    plan_from_run,
    stratified_sample,
)
from conversion.errors import ConversionError
from conversion.gate import GateResult, apply_gate
from conversion.ops import EdgeTPUOpCheck, ModelInfo, check_edgetpu_ops, quantization_json
from conversion.report import markdown_report, verification_json, write_json
from conversion.source import ConversionSource
from conversion.verify import evaluate
from device.manifest import MODEL_FILE, VARIANTS, Manifest, Verification

log = logging.getLogger(__name__)

CPU_ORDER = tuple(v for v in VARIANTS if v != "edgetpu")
EXIT_OK, EXIT_GATE_FAILED, EXIT_ERROR, EXIT_EDGETPU_MISSING = 0, 1, 2, 3


@dataclass
class ConvertOptions:
    variants: Sequence[str] | None = None  # None: all that apply
    out_dir: Path | None = None
    data_dir: Path | None = None
    calibration_data: Path | None = None
    calibration_size: int = 300
    max_test_images: int | None = None
    max_drop: float = 1.0
    threads: int | None = None
    seed: int = 0
    input_size: tuple[int, int] | None = None
    compiler_timeout_s: float = 600.0


@dataclass
class EdgeTPUStatus:
    requested: bool
    explicit: bool
    compiler: str | None = None
    command: str | None = None
    compiled: etpu.CompileResult | None = None

    @property
    def missing(self) -> bool:
        return self.requested and self.compiler is None

    def as_json(self) -> dict[str, Any]:
        return {
            "requested": self.requested,
            "compiler": self.compiler,
            "compiled": self.compiled is not None,
            "command": self.command,
            "report": self.compiled.report.as_json() if self.compiled else None,
        }


@dataclass
class ConversionResult:
    out_dir: Path
    bundles: dict[str, Path]
    gate: GateResult
    op_check: EdgeTPUOpCheck | None
    edgetpu: EdgeTPUStatus
    calibration: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        if not self.gate.passed:
            return EXIT_GATE_FAILED
        if self.edgetpu.missing and self.edgetpu.explicit:
            return EXIT_EDGETPU_MISSING
        return EXIT_OK


def resolve_variants(requested: Sequence[str] | None) -> tuple[list[str], bool]:
    """The variants to write, and whether they were asked for explicitly."""
    if not requested:
        return list(VARIANTS), False
    unknown = [v for v in requested if v not in VARIANTS]
    if unknown:
        raise ConversionError(
            f"unknown variant(s): {', '.join(unknown)}", f"choose from {', '.join(VARIANTS)}"
        )
    chosen = [v for v in VARIANTS if v in requested]
    if "edgetpu" in chosen and "int8" not in chosen:
        chosen.insert(chosen.index("edgetpu"), "int8")  # the compiler's input
    return chosen, True


def _plan(source: ConversionSource, options: ConvertOptions) -> DataPlan:
    if options.data_dir is not None:
        plan = plan_from_folder(
            options.data_dir, source.labels, options.calibration_size, options.seed
        )
    elif source.run_dir is not None:
        plan = plan_from_run(source.split_manifest, options.calibration_size, options.seed)
    else:
        raise ConversionError(
            "no images to calibrate and verify with",
            "pass --data DIR (an ImageFolder: DIR/<class>/<images>) with --model",
        )
    if options.calibration_data is not None:
        calibration = images_in(options.calibration_data)
        plan.calibration = stratified_sample(calibration, options.calibration_size, options.seed)
        plan.description += f"; calibration from {options.calibration_data}"
    if options.max_test_images and len(plan.test) > options.max_test_images:
        plan.test = stratified_sample(plan.test, options.max_test_images, options.seed)
    return plan


def _clear_stale(folder: Path) -> None:
    """Remove a previous bundle of the same variant (only folders that are bundles)."""
    if is_bundle(folder):
        shutil.rmtree(folder)


def _io_check(info: ModelInfo) -> None:
    """The int8 contract: uint8 in and out, batch 1; float ops inside are reported."""
    problems = [
        f"{what} is {t.dtype.name} {list(t.shape)}"
        for what, t in (("input", info.input), ("output", info.output))
        if t.dtype.name != "uint8" or not t.shape or t.shape[0] != 1
    ]
    if problems:
        raise ConversionError(
            "the int8 model does not take and give uint8 with batch 1: " + "; ".join(problems),
            "the model has more than one input/output or an unusual head",
        )
    floats = sorted(set(info.float_ops()))
    if floats:
        log.warning(
            "the int8 model keeps float op(s) %s: they run on the CPU (and split an Edge TPU "
            "model); convert from the Keras file, or replace the layer",
            ", ".join(floats),
        )


def run_conversion(source: ConversionSource, options: ConvertOptions) -> ConversionResult:
    from conversion.converter import convert
    from conversion.network import load_network
    from conversion.ops import read_model_info

    variants, explicit = resolve_variants(options.variants)
    out_dir = (options.out_dir or Path("models") / source.name).resolve()
    plan = _plan(source, options)
    log.info(
        "%s: %d calibration / %d test images (%s)",
        source.name,
        len(plan.calibration),
        len(plan.test),
        plan.description,
    )
    status = EdgeTPUStatus(requested="edgetpu" in variants, explicit=explicit)
    with tempfile.TemporaryDirectory(prefix="edgecam-convert-") as tmp:
        work = Path(tmp)
        size = options.input_size or (source.input.height, source.input.width)
        network = load_network(source.model_path, work, *size, fallback=source.fallback_model)
        if network.num_classes != len(source.labels):
            raise ConversionError(
                f"the labels list {len(source.labels)} classes but the model outputs "
                f"{network.num_classes}",
                "use the labels file that was trained with this model",
            )
        spec = replace(source.input, height=network.height, width=network.width)
        spec_json = spec.to_json()
        base = Manifest(
            name=source.name,
            version=str(source.run_info.get("version", "1")),
            created_at=now_iso(),
            input=spec,
            source={**source.describe(), "data": plan.description},
            extra={
                "normalisation": {
                    "mean": spec_json["mean"],
                    "std": spec_json["std"],
                    "formula": "x = (pixel - mean) / std, folded into the input quantization",
                }
            },
        )
        calibration = CalibrationSet(
            plan.calibration, source.input, network.height, network.width, network.dtype
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        bundles: dict[str, Path] = {}
        infos: dict[str, ModelInfo] = {}
        for variant in CPU_ORDER:
            if variant not in variants and variant != "float32":
                continue
            data = convert(network, variant, calibration if variant == "int8" else None)
            info = read_model_info(data)
            if variant == "int8":
                _io_check(info)
            folder = out_dir / variant if variant in variants else work / variant
            _clear_stale(folder)
            extra = {**base.extra, "quantization": quantization_json(info)}
            if variant == "int8":
                extra["calibration"] = {
                    "images": calibration.used,
                    "range_anchor": calibration.anchored,
                    "source": plan.description,
                }
            manifest = replace(base, variant=variant, extra=extra)
            write_bundle(folder, data, source.labels, manifest)
            bundles[variant], infos[variant] = folder, info
            log.info("%s: %d bytes, ops %s", variant, len(data), info.op_counts())

        op_check = check_edgetpu_ops(infos["int8"]) if "int8" in infos else None
        if status.requested:
            _edgetpu(status, bundles, infos, base, out_dir, work, source, options)

        evaluation = evaluate(bundles, plan.test, options.threads)
        gate = apply_gate(evaluation, source.labels, options.max_drop)
        calib = {
            "images": calibration.used,
            "range_anchor": calibration.anchored,
            "source": plan.description,
        }
        for variant, folder in bundles.items():
            if folder.parent != out_dir:
                continue
            fig = gate.figures[variant]
            update_manifest(
                folder,
                metrics={**fig.as_json(), "test_images": gate.test_images},
                verification=Verification(
                    gate=gate.status,
                    variant_gate=fig.status,
                    max_drop=gate.max_drop,
                    reference=gate.reference,
                ),
            )
        bundles = {v: f for v, f in bundles.items() if f.parent == out_dir}
        extra_notes = []
        if op_check is not None:
            extra_notes.append(op_check.summary())
        if status.compiled is not None:
            extra_notes.append("Edge TPU compiler: " + status.compiled.report.summary())
        elif status.missing:
            extra_notes.append(f"edgetpu_compiler not found; compile later with: {status.command}")
        write_json(
            out_dir / "verification.json",
            verification_json(
                gate,
                name=source.name,
                created_at=now_iso(),
                variants_requested=variants,
                source=base.source,
                calibration=calib,
                edgetpu_op_check=op_check.as_json() if op_check else None,
                edgetpu=status.as_json(),
            ),
        )
        (out_dir / "verification.md").write_text(
            markdown_report(gate, source.name, extra_notes), encoding="utf-8"
        )
    return ConversionResult(out_dir, bundles, gate, op_check, status, calib)


def _edgetpu(
    status: EdgeTPUStatus,
    bundles: dict[str, Path],
    infos: dict[str, ModelInfo],
    base: Manifest,
    out_dir: Path,
    work: Path,
    source: ConversionSource,
    options: ConvertOptions,
) -> None:
    int8_model = bundles["int8"] / MODEL_FILE
    folder = out_dir / "edgetpu"
    status.command = etpu.command_line(int8_model, folder)
    status.compiler = etpu.find_compiler()
    _clear_stale(folder)
    if status.compiler is None:
        log.warning("edgetpu_compiler not found: the edgetpu variant was not built")
        return
    result = etpu.compile_model(
        int8_model, work / "edgetpu", status.compiler, options.compiler_timeout_s
    )
    status.compiled = result
    manifest = replace(
        base,
        variant="edgetpu",
        extra={
            **base.extra,
            "quantization": quantization_json(infos["int8"]),
            "edgetpu": {"compile_command": status.command, **result.report.as_json()},
        },
    )
    write_bundle(folder, result.model.read_bytes(), source.labels, manifest)
    if result.log is not None:
        shutil.copyfile(result.log, folder / result.log.name)
    (folder / "compiler_output.txt").write_text(result.stdout, encoding="utf-8")
    bundles["edgetpu"] = folder
    log.info("edgetpu: %s", result.report.summary())
