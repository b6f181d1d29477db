"""Parsing edgetpu_compiler's report: samples in the format Coral documents and users post."""

from __future__ import annotations

from pathlib import Path

from conversion.edgetpu import command_line, compile_command, parse_compiler_output

# A model that maps fully (the form of the output in Coral's compiler docs and retraining
# tutorials): no "will run on" lines, the op count is the total.
FULL_STDOUT = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 1145 ms.

Input model: mobilenet_v2_1.0_224_quant.tflite
Input size: 3.03MiB
Output model: mobilenet_v2_1.0_224_quant_edgetpu.tflite
Output size: 3.42MiB
On-chip memory used for caching model parameters: 3.24MiB
On-chip memory remaining for caching model parameters: 4.60MiB
Off-chip memory used for streaming uncached model parameters: 0.00B
Number of Edge TPU subgraphs: 1
Total number of operations: 72
Operation log: mobilenet_v2_1.0_224_quant_edgetpu.log
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""

FULL_LOG = """\
Edge TPU Compiler version 16.0.384591198
Input: mobilenet_v2_1.0_224_quant.tflite
Output: mobilenet_v2_1.0_224_quant_edgetpu.tflite

Operator                       Count      Status

ADD                            10         Mapped to Edge TPU
AVERAGE_POOL_2D                1          Mapped to Edge TPU
CONV_2D                        36         Mapped to Edge TPU
DEPTHWISE_CONV_2D              17         Mapped to Edge TPU
FULLY_CONNECTED                1          Mapped to Edge TPU
QUANTIZE                       2          Mapped to Edge TPU
RESHAPE                        2          Mapped to Edge TPU
SOFTMAX                        1          Mapped to Edge TPU
SQUEEZE                        2          Mapped to Edge TPU
"""

# A model that maps partly, as the compiler prints it with -s (a real output posted by a user).
PARTIAL_STDOUT = """\
Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 4466 ms.

Input model: FRC_model.tflite
Input size: 14.08MiB
Output model: FRC_model_edgetpu.tflite
Output size: 14.17MiB
On-chip memory used for caching model parameters: 7.14MiB
On-chip memory remaining for caching model parameters: 1.75KiB
Off-chip memory used for streaming uncached model parameters: 6.63MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 141
Operation log: FRC_model_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 138
Number of operations that will run on CPU: 3

Operator                       Count      Status

RESHAPE                        1          Operation is otherwise supported, but not mapped due to some unspecified limitation
CONCATENATION                  1          Operation is otherwise supported, but not mapped due to some unspecified limitation
QUANTIZE                       1          Operation is otherwise supported, but not mapped due to some unspecified limitation
... All other operators were mapped successfully. See FRC_model_edgetpu.log.
"""


def test_fully_mapped_model_counts_every_op_on_the_edgetpu() -> None:
    report = parse_compiler_output(FULL_STDOUT, FULL_LOG)
    assert report.total_ops == 72
    assert (report.ops_edgetpu, report.ops_cpu) == (72, 0)
    assert report.version == "16.0.384591198"
    assert report.subgraphs == 1
    assert report.on_chip_used == "3.24MiB"
    assert report.off_chip_used == "0.00B"
    assert sum(o.count for o in report.operators) == 72
    assert all(o.mapped for o in report.operators)
    assert report.cpu_operators == []
    assert "72 op(s) run on the Edge TPU, 0 on the CPU" in report.summary()


def test_fully_mapped_without_log_still_uses_the_total() -> None:
    report = parse_compiler_output(FULL_STDOUT)
    assert (report.ops_edgetpu, report.ops_cpu, report.total_ops) == (72, 0, 72)


def test_partly_mapped_model_names_the_cpu_ops() -> None:
    report = parse_compiler_output(PARTIAL_STDOUT)
    assert (report.ops_edgetpu, report.ops_cpu, report.total_ops) == (138, 3, 141)
    assert [o.op for o in report.cpu_operators] == ["RESHAPE", "CONCATENATION", "QUANTIZE"]
    assert report.cpu_operators[0].status.startswith("Operation is otherwise supported")
    assert report.off_chip_used == "6.63MiB"
    text = report.summary()
    assert "138 op(s) run on the Edge TPU, 3 on the CPU" in text
    assert "CONCATENATION x1" in text
    data = report.as_json()
    assert data["ops_cpu"] == 3 and len(data["operators"]) == 3


def test_counts_come_from_the_table_when_the_summary_lines_are_missing() -> None:
    log_only = FULL_LOG.replace(
        "SQUEEZE                        2          Mapped to Edge TPU",
        "SQUEEZE                        2          Operation not supported",
    )
    report = parse_compiler_output("", log_only)
    assert (report.ops_edgetpu, report.ops_cpu, report.total_ops) == (70, 2, 72)


def test_command_line_is_the_documented_one() -> None:
    cmd = compile_command(Path("models/x/int8/model.tflite"), Path("models/x/edgetpu"))
    assert cmd == ["edgetpu_compiler", "-s", "-o", "models/x/edgetpu", "models/x/int8/model.tflite"]
    assert command_line(Path("a b/model.tflite"), Path("out")) == (
        "edgetpu_compiler -s -o out 'a b/model.tflite'"
    )
