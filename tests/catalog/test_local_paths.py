"""Local model paths: normalised, strictly inside a root, no traversal, no symlink escape."""

import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from arbiter.engine.disk import model_disk_status
from arbiter.errors import InvalidInput
from catalog.validation import FIELDS, normalize_local_path, validate_catalog_fields

ROOTS = ["/models"]


@pytest.mark.parametrize(
    "path",
    [
        "/models/../etc/passwd",
        "/models/a/../../etc",
        "/models/..",
        "/models/%2e%2e%2fetc",
        "/models/%2e%2e/etc",
        "/models/a%2Fb",
        "/models/a%00",
        "/models/a\x00b",
        "/models/a\nb",
        "/models/a\rb",
        "/models/a\tb",
        "/models/a\x1b[31m",
        "models/a",
        "./models/a",
        "",
        "/models",
        "/models/",
        "//models//",
        "/models/.",
        "/models-evil/x",
        "/modelsx/a",
        "/etc/passwd",
        "/",
        "/models/a:/etc",
        "/models/a,readonly=false",
        "/models/a\\b",
        " /models/a",
    ],
)
def test_it_rejects_a_bad_local_path(path):
    with pytest.raises(InvalidInput) as error:
        normalize_local_path(path, ROOTS)
    assert error.value.field == "local_path"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/models/a", "/models/a"),
        ("/models/org/run-3/checkpoint-500", "/models/org/run-3/checkpoint-500"),
        ("/models/a/", "/models/a"),
        ("//models//a", "/models/a"),
        ("/models/./a/./b", "/models/a/b"),
        ("/models/my model v2", "/models/my model v2"),
        ("/models/-dash-first", "/models/-dash-first"),
    ],
)
def test_it_normalises_an_accepted_local_path(path, expected):
    assert normalize_local_path(path, ROOTS) == expected


def test_it_compares_roots_by_component():
    roots = ["/models/", "/srv/weights"]
    assert normalize_local_path("/srv/weights/a", roots) == "/srv/weights/a"
    with pytest.raises(InvalidInput):
        normalize_local_path("/srv/weights-old/a", roots)
    with pytest.raises(InvalidInput):
        normalize_local_path("/srv", roots)


def test_it_names_the_roots_in_the_message():
    with pytest.raises(InvalidInput) as error:
        normalize_local_path("/models-evil/x", ROOTS)
    assert "/models" in error.value.message and "models-evil" in error.value.message


# -- symlinks are resolved on the host -------------------------------------------------


async def test_it_refuses_a_symlink_inside_a_root_pointing_outside(sim_a):
    host, target = sim_a
    host.fs.add_file("/srv/secret-weights/model.safetensors", size=5000)
    link = host.fs.local("/models/innocent")
    os.symlink("/srv/secret-weights", link)  # absolute: a path of the simulated host

    status = await model_disk_status(target, "/models/innocent", local=True, roots=ROOTS)

    assert status.present is False
    assert status.size_bytes is None
    assert "/srv/secret-weights" in status.detail and "outside the allowed model roots" in (
        status.detail
    )


async def test_it_refuses_a_relative_symlink_climbing_out_of_the_root(sim_a):
    host, target = sim_a
    host.fs.add_file("/home/arbiter/weights/model.safetensors", size=10)
    os.symlink("../home/arbiter/weights", host.fs.local("/models/climb"))

    status = await model_disk_status(target, "/models/climb", local=True, roots=ROOTS)

    assert (status.present, status.size_bytes) == (False, None)
    assert "'/home/arbiter/weights'" in status.detail


async def test_it_refuses_a_link_to_a_sibling_prefix_root(sim_a):
    host, target = sim_a
    host.fs.add_file("/models-evil/x/model.safetensors", size=10)
    os.symlink("/models-evil/x", host.fs.local("/models/looks-fine"))

    status = await model_disk_status(target, "/models/looks-fine", local=True, roots=ROOTS)

    assert status.present is False and "/models-evil/x" in status.detail


async def test_it_follows_a_symlink_that_stays_inside_a_root(sim_a):
    host, target = sim_a
    host.fs.add_file("/models/runs/7/model.safetensors", size=1000)
    os.symlink("runs/7", host.fs.local("/models/latest"))

    status = await model_disk_status(target, "/models/latest", local=True, roots=ROOTS)

    assert status.present is True
    assert status.path == "/models/runs/7"
    assert status.size_bytes == 4096 + 1000  # the directory itself plus the file (du -sb)


async def test_it_reports_a_missing_local_path_as_absent(sim_a):
    _host, target = sim_a
    status = await model_disk_status(target, "/models/nope", local=True, roots=ROOTS)
    assert (status.present, status.size_bytes) == (False, None)
    assert status.detail == "not found"


async def test_it_never_asks_the_host_about_a_path_outside_the_roots(sim_cluster, sim_a):
    _host, target = sim_a
    before = len(sim_cluster.commands("sim-a"))
    status = await model_disk_status(target, "/etc/../models/x", local=True, roots=ROOTS)
    assert status.present is False and "'..'" in status.detail
    assert len(sim_cluster.commands("sim-a")) == before


# -- properties ------------------------------------------------------------------------

path_text = st.text(alphabet=st.sampled_from(list("/.%:\\\x00\n -abmodelsx2eF")), max_size=30)


@example("/models/x /")  # once normalised to "/models/x ", which re-validation rejected
@given(st.one_of(path_text, st.builds(lambda s: "/models/" + s, path_text)))
@settings(max_examples=400, deadline=None)
def test_it_accepts_only_paths_strictly_inside_a_root(path):
    try:
        normalised = normalize_local_path(path, ROOTS)
    except InvalidInput as error:
        assert error.field == "local_path"
        return
    parts = normalised.split("/")
    assert parts[:2] == ["", "models"] and len(parts) > 2
    assert all(part not in ("", ".", "..") for part in parts[1:])
    assert not set(normalised) & set("%:\\\x00\n")
    assert normalize_local_path(normalised, ROOTS) == normalised  # idempotent


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=5,
)


@given(st.dictionaries(st.sampled_from(FIELDS), json_values))
@settings(max_examples=300, deadline=None)
def test_it_answers_any_input_with_a_result_or_a_named_field(data):
    try:
        cleaned = validate_catalog_fields(data, roots=ROOTS)
    except InvalidInput as error:
        assert error.field and all(name in FIELDS for name in error.field.split(","))
        return
    assert bool(cleaned["hub_repo"]) != bool(cleaned["local_path"])
