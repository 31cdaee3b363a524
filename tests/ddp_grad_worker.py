"""Run by tests/test_distributed.py under torchrun: one SGD step of a small model, each rank on its half of
a batch through FabricDDP, must give the weights of one step on the whole batch in a single process."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tl_core.distributed import FabricDDP  # noqa: E402


def model_and_batch():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 3))
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    return model, x, y


def one_step(model, x, y, strategy=None):
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    if strategy is None:
        loss.backward()
        optimizer.step()
    else:
        strategy.backward(loss)
        strategy.step(optimizer)


strategy = FabricDDP("cpu")
model, x, y = model_and_batch()
mine = strategy.shard(torch.arange(len(x)))
one_step(model, x[mine], y[mine], strategy)
reference, x, y = model_and_batch()
one_step(reference, x, y)
same = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(model.parameters(), reference.parameters()))
moved = any(not torch.allclose(a, b) for a, b in zip(model.parameters(), model_and_batch()[0].parameters()))
sys.stdout.write(f"rank {strategy.rank}: shard {mine.tolist()}, same as one process: {same}, moved: {moved}\n")
sys.stdout.flush()
strategy.close()
