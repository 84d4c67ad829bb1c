"""torchrun with 2 CPU processes (gloo): DDP trains, and only rank 0 writes."""

import socket
from types import SimpleNamespace

import pytest
import torch.distributed as dist
import yaml

from tests.train.conftest import make_recipe, read_log, run_module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(tmp_path, shapes):
    out = tmp_path / "ddp"
    recipe = make_recipe("instruct", out, [{"format": "llava", "path": str(shapes / "train.json")}],
                         lora={"r": 4, "alpha": 8, "dropout": 0.0}, training={"max_steps": 3, "save_steps": 2})
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = run_module("-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                        "--master_port", str(free_port()), "-m", "omniphi.train", str(path), timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    # Rank 0 alone prints, logs and saves.
    assert result.stdout.count("trained 3 steps") == 1
    assert "global batch 2 × 2 × 1" in result.stderr  # two processes really joined
    steps = [r for r in read_log(out) if r["type"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3]
    # 3 steps × 2 processes × 2 samples of 36: twice the epoch progress of one process.
    assert abs(steps[-1]["epoch"] - 3 * 4 / 36) < 1e-3  # single-process would be 3 * 2 / 36
    assert (out / "omniphi_trained.json").is_file() and (out / "checkpoint-2" / "trainer_state.json").is_file()
    assert not list(out.glob("**/*.tmp*"))


@pytest.mark.parametrize("outcome", ["finished", "failed"])
def test_train_leaves_the_process_group_before_exiting(tmp_path, monkeypatch, outcome):
    """A rank that exits with its gloo group alive can abort in interpreter teardown (SIGABRT,
    'terminate called without an active exception') after training finished, and torchrun then
    fails the run: `omniphi train` destroys the group itself, whether training ended or raised."""
    from omniphi.train import cli, run

    def fake_training(recipe, resume=None):
        assert dist.is_initialized()  # the group is there while training
        if outcome == "failed":
            raise RuntimeError("training failed")
        return SimpleNamespace(trainer=None, complete=False, global_step=0, max_steps=1, output_dir=tmp_path)

    monkeypatch.setattr(run, "run_training", fake_training)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(make_recipe("instruct", tmp_path / "out", [{"format": "llava", "path": "unread.json"}])))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        args = SimpleNamespace(recipe=str(recipe), overrides=[])
        if outcome == "failed":
            with pytest.raises(RuntimeError, match="training failed"):
                cli.run_train(args)
        else:
            assert cli.run_train(args) == 0
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("code", [0, 1])
def test_a_torchrun_rank_ends_without_interpreter_teardown(monkeypatch, code):
    """Even with its group destroyed, a rank left to interpreter teardown could abort after training
    (DDP still holds the gloo group): under torchrun `python -m omniphi.train` ends through
    os._exit with the run's own status, its output flushed; one process returns as usual."""
    from omniphi.train import cli

    ended = []

    class Ended(Exception):
        pass

    def fake_exit(status):
        ended.append(status)
        raise Ended

    monkeypatch.setattr(cli, "run_train", lambda args: code)
    monkeypatch.setattr("os._exit", fake_exit)
    monkeypatch.setattr("logging.shutdown", lambda: ended.append("logs flushed"))
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(Ended):
        cli.main(["recipe.yaml"])
    assert ended == ["logs flushed", code]
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert cli.main(["recipe.yaml"]) == code and ended == ["logs flushed", code]
