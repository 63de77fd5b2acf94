"""The accelerator catalog: sourced, positive, loadable by alias, and user YAML round trips."""

import dataclasses

import pytest

from ecdit_scale.errors import ConfigError
from ecdit_scale.files import dump_yaml
from ecdit_scale.planner.hardware import (
    DEFAULT_EFFICIENCY,
    Accelerator,
    catalog,
    get_accelerator,
    load_accelerators,
    save_accelerator,
)

REQUIRED_KEYS = {"h100-sxm", "h200", "a100-80gb", "b200", "mi300x", "tpu-v5p"}
NUMBERS = ("peak_bf16_flops", "memory_bytes", "memory_bw_bytes_per_s",
           "intra_node_bw_bytes_per_s", "inter_node_bw_bytes_per_s")


def test_catalog_has_the_required_accelerators():
    assert REQUIRED_KEYS <= set(catalog())


@pytest.mark.parametrize("name", sorted(catalog()))
def test_every_entry_is_sourced_and_positive(name):
    acc = catalog()[name]
    assert acc.name == name
    assert acc.source.strip()
    assert all(getattr(acc, f) > 0 for f in NUMBERS)
    assert acc.devices_per_node >= 1
    assert 0 < acc.efficiency <= 1
    # dense bf16 peak in a plausible range (guards against sparse numbers or unit slips)
    assert 1e14 < acc.peak_bf16_flops < 5e15
    assert acc.intra_node_bw_bytes_per_s >= acc.inter_node_bw_bytes_per_s


def test_known_datasheet_numbers():
    h100 = get_accelerator("h100-sxm")
    assert h100.peak_bf16_flops == pytest.approx(989.4e12)
    assert h100.intra_node_bw_bytes_per_s == 450e9  # NVLink 4, one direction
    assert h100.inter_node_bw_bytes_per_s == 50e9  # 400 Gb/s NDR per GPU
    assert get_accelerator("a100-80gb").peak_bf16_flops == 312e12


@pytest.mark.parametrize("alias, key", [("H100", "h100-sxm"), ("h100_sxm", "h100-sxm"),
                                        ("H200", "h200"), ("A100", "a100-80gb"),
                                        ("MI300X", "mi300x"), ("v5p", "tpu-v5p"),
                                        ("TPU-V5P", "tpu-v5p")])
def test_lookup_is_case_insensitive_with_aliases(alias, key):
    assert get_accelerator(alias) is catalog()[key]


def test_unknown_name_names_the_valid_choices():
    with pytest.raises(ConfigError) as err:
        get_accelerator("h1000")
    msg = str(err.value)
    assert "\n" not in msg and "h1000" in msg
    assert all(key in msg for key in REQUIRED_KEYS)


def test_user_yaml_round_trip(tmp_path):
    calibrated = dataclasses.replace(get_accelerator("h100"), name="my-h100", efficiency=0.38,
                                     calibrated_from="runs/2024-05-01/nano-ec8")
    path = save_accelerator(calibrated, tmp_path / "my-h100.yaml")
    assert load_accelerators(path) == {"my-h100": calibrated}
    assert get_accelerator(str(path)) == calibrated


def test_user_yaml_with_several_entries(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(
        "gpu-a:\n  peak_bf16_flops: 1.0e+15\n  memory_bytes: 8.0e+10\n"
        "  memory_bw_bytes_per_s: 3e12\n  intra_node_bw_bytes_per_s: 4.5e11\n"
        "  inter_node_bw_bytes_per_s: 2.5e10\n  devices_per_node: 4\n  source: our benchmark\n"
        "gpu-b:\n  peak_bf16_flops: 2.0e+15\n  memory_bytes: 8.0e+10\n"
        "  memory_bw_bytes_per_s: 3e12\n  intra_node_bw_bytes_per_s: 4.5e11\n"
        "  inter_node_bw_bytes_per_s: 2.5e10\n  devices_per_node: 4\n  source: our benchmark\n")
    accs = load_accelerators(path)
    assert set(accs) == {"gpu-a", "gpu-b"}
    assert accs["gpu-a"].memory_bw_bytes_per_s == 3e12  # "3e12" is a string to YAML 1.1
    assert accs["gpu-a"].efficiency == DEFAULT_EFFICIENCY
    assert get_accelerator(f"{path}:gpu-b").peak_bf16_flops == 2e15
    with pytest.raises(ConfigError, match="pick one"):
        get_accelerator(str(path))


@pytest.mark.parametrize("edit, field", [
    (lambda d: d.pop("source"), "source"),
    (lambda d: d.pop("peak_bf16_flops"), "peak_bf16_flops"),
    (lambda d: d.update(memory_bytes=-1), "memory_bytes"),
    (lambda d: d.update(memory_bw_bytes_per_s="fast"), "memory_bw_bytes_per_s"),
    (lambda d: d.update(devices_per_node=2.5), "devices_per_node"),
    (lambda d: d.update(efficiency=1.5), "efficiency"),
    (lambda d: d.update(nvlink_gen=4), "nvlink_gen"),
    (lambda d: d.update(devices_per_node=10**6),
     "devices_per_node = 1000000: must be an integer in 1..1024"),
    (lambda d: d.update({7: 1}), "field name 7 is not a string"),
    (lambda d: d.update(deepspeed_accelerator="tpu"), "deepspeed_accelerator = 'tpu': choose one"),
    (lambda d: d.update(precisions=["fp8"]), "precisions"),
    (lambda d: d.update(precisions=[]), "precisions"),
    (lambda d: d.update(precisions="bf16"), "precisions"),
])
def test_invalid_user_yaml_names_the_field(tmp_path, edit, field):
    data = get_accelerator("h100").to_dict()
    edit(data)
    path = tmp_path / "bad.yaml"
    path.write_text(dump_yaml(data))
    with pytest.raises(ConfigError, match=field) as exc:
        load_accelerators(path)
    assert str(path) in str(exc.value)


def test_sustained_flops_is_the_one_definition_of_usable_compute():
    acc = get_accelerator("h100")
    assert acc.sustained_flops == acc.peak_bf16_flops * acc.efficiency


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        get_accelerator(str(tmp_path / "nope.yaml"))


def test_accelerator_is_validated_on_construction():
    with pytest.raises(ConfigError, match="source"):
        Accelerator(name="x", peak_bf16_flops=1e15, memory_bytes=1e10, memory_bw_bytes_per_s=1e12,
                    intra_node_bw_bytes_per_s=1e11, inter_node_bw_bytes_per_s=1e10,
                    devices_per_node=8, source=" ")


def test_deepspeed_accelerator_and_precisions_in_the_catalog():
    # GPUs (NVIDIA, and AMD through ROCm's torch.cuda) run DeepSpeed's cuda accelerator; DeepSpeed
    # has no TPU accelerator, so a TPU gets a plan without launch files
    for name, acc in catalog().items():
        assert acc.runs_deepspeed == (name != "tpu-v5p")
        assert acc.precisions and set(acc.precisions) <= {"bf16", "fp16", "tf32", "fp32"}
        assert set(acc.precisions) <= set(dict(acc.peak_flops))  # each at a cited peak
    assert get_accelerator("tpu-v5p").deepspeed_accelerator == "none"
    assert get_accelerator("mi300x").deepspeed_accelerator == "cuda"
    assert get_accelerator("tpu-v5p").precisions == ("bf16",)


def test_profile_without_the_new_fields_defaults_to_cuda_bf16_fp32(tmp_path):
    data = get_accelerator("h100").to_dict()
    del data["deepspeed_accelerator"], data["precisions"]
    path = tmp_path / "old.yaml"
    path.write_text(dump_yaml(data))
    acc = get_accelerator(str(path))
    assert acc.deepspeed_accelerator == "cuda" and acc.precisions == ("bf16", "fp32")
