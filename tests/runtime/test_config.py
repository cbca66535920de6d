"""Options from the command line and RUNTIME_* variables, checked once at start-up."""

from __future__ import annotations

import pytest

from inference_runtime.config import Config, parse_config

pytestmark = pytest.mark.runtime


def test_the_environment_configures_everything_and_the_command_line_wins():
    env = {
        "RUNTIME_MODEL_PATH": "/models/m.pt2",
        "RUNTIME_MODEL_NAME": "resnet",
        "RUNTIME_MODEL_VERSION": "7",
        "RUNTIME_MODEL_SHA256": "AB" * 32,
        "RUNTIME_PORT": "9000",
        "RUNTIME_DEVICE": "cpu",
        "RUNTIME_DTYPE": "bfloat16",
        "RUNTIME_MAX_BATCH_SIZE": "8",
        "RUNTIME_MAX_DELAY_MS": "0.5",
        "RUNTIME_MAX_QUEUE": "10",
        "RUNTIME_REQUEST_TIMEOUT_S": "2.5",
        "RUNTIME_SIGNATURE": '{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]}',
    }
    config = parse_config(["--port", "9100", "--max-batch-size", "4"], env)
    assert config == Config(
        model_path="/models/m.pt2",
        model_name="resnet",
        model_version="7",
        sha256="ab" * 32,
        signature={"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}]},
        port=9100,
        device="cpu",
        dtype="bfloat16",
        max_batch_size=4,
        max_delay_ms=0.5,
        max_queue=10,
        request_timeout_s=2.5,
    )


def test_defaults():
    config = parse_config(["--model", "m.pt", "--name", "m"], {})
    assert (config.model_version, config.device, config.dtype, config.max_batch_size) == ("1", "auto", "float32", 16)


def test_num_threads_up_to_1024():
    assert parse_config(["--num-threads", "1024"], NAMED).num_threads == 1024
    assert parse_config([], {**NAMED, "RUNTIME_NUM_THREADS": "0"}).num_threads == 0


def test_signature_from_a_file(tmp_path):
    path = tmp_path / "signature.json"
    path.write_text('{"inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, -1]}]}')
    config = parse_config(["--model", "m.pt", "--name", "m", "--signature", f"@{path}"], {})
    assert config.signature["inputs"][0]["datatype"] == "INT64"


NAMED = {"RUNTIME_MODEL_PATH": "m.pt", "RUNTIME_MODEL_NAME": "m"}


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        ([], {}, "--model (or RUNTIME_MODEL_PATH) is required"),
        (["--model", "m.pt"], {}, "--name (or RUNTIME_MODEL_NAME) is required"),
        (["--max-delay-ms", "-1"], NAMED, "--max-delay-ms '-1': must be 0 or more"),
        ([], {**NAMED, "RUNTIME_PORT": "http"}, "RUNTIME_PORT 'http'"),
        ([], {**NAMED, "RUNTIME_DEVICE": "tpu"}, "must be one of auto, cpu, cuda"),
        (["--sha256", "abc"], NAMED, "must be 64 hexadecimal digits"),
        (["--signature", "{"], NAMED, "is not valid JSON"),
        (["--signature", '{"inputs": []}'], NAMED, 'non-empty list "inputs"'),
        (["--name", "a/b"], NAMED, "letters, digits"),
        (["--num-threads", "99999"], NAMED, "--num-threads '99999': must be between 0 (torch's default) and 1024"),
        (["--num-threads", "-1"], NAMED, "--num-threads '-1': must be between 0"),
        ([], {**NAMED, "RUNTIME_NUM_THREADS": "1025"}, "RUNTIME_NUM_THREADS '1025': must be between 0"),
    ],
)
def test_bad_values_exit_2_with_a_message(args, env, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(args, env)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
