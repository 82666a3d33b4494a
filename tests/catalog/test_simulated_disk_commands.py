"""The simulator's realpath, rm and hf: confined to each host's simulated file system."""

import os

from arbiter.engine.ssh import run


async def test_it_refuses_to_remove_the_root(sim_a):
    host, target = sim_a
    for path in ("/", "//", "/models/../..", "/models/..", "/models/x/.."):
        result = await run(target, ["rm", "-rf", "--", path], timeout=5, check=False)
        assert result.exit_status == 1
        assert "dangerous to operate recursively" in result.stderr or "refusing" in result.stderr
    assert host.fs.kind("/models") == "dir"


async def test_it_removes_a_symlink_not_its_target(sim_a):
    host, target = sim_a
    host.fs.add_file("/srv/keep/model.safetensors", size=10)
    link = "/home/arbiter/.cache/huggingface/hub/link"
    os.symlink("/srv/keep", host.fs.local(link))
    result = await run(target, ["rm", "-rf", "--", link], timeout=5)
    assert result.exit_status == 0
    assert not host.fs.local(link).is_symlink()
    assert host.fs.kind("/srv/keep/model.safetensors") == "file"


async def test_it_needs_recursive_for_a_directory_and_force_for_a_missing_path(sim_a):
    host, target = sim_a
    host.fs.add_file("/models/d/x", size=1)
    plain = await run(target, ["rm", "--", "/models/d"], timeout=5, check=False)
    assert (plain.exit_status, plain.stderr) == (
        1,
        "rm: cannot remove '/models/d': Is a directory\n",
    )
    missing = await run(target, ["rm", "-r", "--", "/models/nope"], timeout=5, check=False)
    assert missing.exit_status == 1
    assert (await run(target, ["rm", "-rf", "--", "/models/nope"], timeout=5)).exit_status == 0


async def test_it_reports_a_symlink_loop_from_realpath(sim_a):
    host, target = sim_a
    os.symlink("/models/b", host.fs.local("/models/a"))
    os.symlink("/models/a", host.fs.local("/models/b"))
    result = await run(target, ["realpath", "-e", "--", "/models/a"], timeout=5, check=False)
    assert result.exit_status == 1
    assert "Too many levels of symbolic links" in result.stderr


async def test_it_defaults_hf_download_to_the_users_cache_and_rejects_unknown_options(sim_a):
    host, target = sim_a
    missing = await run(target, ["hf", "download", "org/tiny-model"], timeout=5, check=False)
    assert (missing.exit_status, missing.stderr) == (127, "sh: 1: hf: not found\n")
    host.set_sshd(hf_on_path=True)
    result = await run(target, ["hf", "download", "org/tiny-model"], timeout=5)
    snapshot = result.stdout.strip().splitlines()[-1]
    assert snapshot.startswith("/home/arbiter/.cache/huggingface/hub/models--org--tiny-model/")
    assert host.fs.kind(f"{snapshot}/model.safetensors") == "file"
    assert host.fs.kind("/home/arbiter/.cache/huggingface/hub/models--org--tiny-model/refs/main")
    bad = await run(target, ["hf", "download", "org/x", "--token=abc"], timeout=5, check=False)
    assert bad.exit_status == 2 and "No such option: --token" in bad.stderr
