"""MPI worker for tests/test_horovod_compat.py: Horovod's API through ``import distnn.distributed as hvd``.

    mpiexec -n N python horovod_api.py

Each check prints ``check NAME rank R: ok`` or the failure; the test expects every check on every rank.
"""
import numpy as np

import distnn.distributed as hvd
from distnn import backend, layers, models, optimizers
from distnn.callbacks import LambdaCallback
from distnn.utils import set_random_seed

hvd.init()
rank, size = hvd.rank(), hvd.size()


def check(name, ok, detail=""):
    print(f"check {name} rank {rank}: {'ok' if ok else 'FAILED ' + str(detail)}", flush=True)


local = np.full(3, rank + 1.0, dtype=np.float32)
total = size * (size + 1) / 2
check("allreduce_average", np.allclose(hvd.allreduce(local), total / size))
check("allreduce_op_sum", np.allclose(hvd.allreduce(local, op=hvd.Sum, name="grad"), total))
check("allreduce_average_false", np.allclose(hvd.allreduce(local, average=False), total))
check("allreduce_scaled", np.allclose(hvd.allreduce(local, op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.5),
                                      total))
check("allreduce_fp16", np.allclose(hvd.allreduce(local * 1.0001, compression=hvd.Compression.fp16), total / size,
                                    rtol=1e-3))
inplace = local.copy()
check("allreduce_", hvd.allreduce_(inplace, op=hvd.Sum) is inplace and np.allclose(inplace, total))
check("broadcast_root_rank", np.allclose(hvd.broadcast(local, root_rank=size - 1, name="w"), size))
target = local.copy()
hvd.broadcast_(target, root_rank=0)
check("broadcast_", np.allclose(target, 1.0))
check("allgather", np.array_equal(hvd.allgather(np.arange(rank + 1)), np.concatenate([np.arange(r + 1)
                                                                                     for r in range(size)])))
check("broadcast_object", hvd.broadcast_object({"from": rank}, root_rank=size - 1) == {"from": size - 1})
check("allgather_object", hvd.allgather_object(rank * 10) == [r * 10 for r in range(size)])
check("topology", (hvd.cross_rank(), hvd.cross_size(), hvd.is_homogeneous()) == (0, 1, True),
      (hvd.cross_rank(), hvd.cross_size(), hvd.is_homogeneous()))
check("mpi", hvd.mpi_enabled() and hvd.mpi_built() and not hvd.gloo_enabled()
      and isinstance(hvd.mpi_threads_supported(), bool))

# broadcast_variables: every rank takes the last rank's weights.
set_random_seed(rank)
model = models.Sequential([layers.Dense(4, input_shape=(3,)), layers.Dense(2)])
model.build((None, 3))
hvd.broadcast_variables(model.variables, root_rank=size - 1)
gathered = hvd.allgather_object(backend.to_numpy(model.params).copy())
check("broadcast_variables", all(np.array_equal(g, gathered[-1]) for g in gathered))

# join: a custom loop where rank r has r + 2 batches. Ranks that finish answer the others'
# gradient reductions with zeros until every rank joined; nobody hangs.
set_random_seed(0)
model = models.Sequential([layers.Dense(3, activation="softmax", input_shape=(4,))])
optimizer = hvd.DistributedOptimizer(optimizers.SGD(0.1))
model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
model.build((None, 4))
model._prepare_optimizer()
hvd.broadcast_variables(model.variables, root_rank=0)
data_rng = np.random.default_rng(rank)
for _ in range(rank + 2):
    x = data_rng.normal(size=(8, 4)).astype(np.float32)
    loss, grads = model.compute_gradients(x, data_rng.integers(0, 3, size=8))
    model.grads[...] = grads
    optimizer.apply(model.params, model.grads)
last = hvd.join()
# As with Horovod: the rank that joined last holds the weights of every update; the others take them.
hvd.broadcast_variables(model.variables, root_rank=last)
gathered = hvd.allgather_object(backend.to_numpy(model.params).copy())
check("join", last == size - 1 and all(np.array_equal(g, gathered[0]) for g in gathered), last)
# LearningRateWarmupCallback: from initial_lr / size up to initial_lr over warmup_epochs, per batch.
rates = []
model = models.Sequential([layers.Dense(2, activation="softmax", input_shape=(4,))])
model.compile(optimizer=hvd.DistributedOptimizer(optimizers.SGD(0.3, momentum=0.5)),
              loss="sparse_categorical_crossentropy")


x = np.random.default_rng(rank).normal(size=(40, 4)).astype(np.float32)
model.fit(x, (x[:, 0] > 0).astype(np.int64), batch_size=10, epochs=3, verbose=0, callbacks=[
    hvd.callbacks.LearningRateWarmupCallback(initial_lr=0.3, warmup_epochs=2),
    LambdaCallback(on_train_batch_begin=lambda batch, logs: rates.append(
        (float(model.optimizer.learning_rate), model.optimizer.momentum)))])
expected = [0.3 / size * ((e + (b + 1) / 4) * (size - 1) / 2 + 1) for e in range(2) for b in range(4)]
old_rates = [0.3] + [r for r, _ in rates[:7]]
momenta = [0.5 * new / old for new, old in zip(expected, old_rates)]  # Horovod's momentum correction
check("warmup", np.allclose([r for r, _ in rates[:8]], expected)
      and np.allclose([m for _, m in rates[:8]], momenta)
      and all(r == rates[7][0] and m == 0.5 for r, m in rates[8:]) and abs(rates[7][0] - 0.3) < 1e-12, rates)


def fit_weights(optimizer):
    set_random_seed(0)
    net = models.Sequential([layers.Dense(4, activation="tanh", input_shape=(4,)),
                             layers.Dense(2, activation="softmax")])
    net.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    net.fit(x, (x[:, 0] > 0).astype(np.int64), batch_size=10, epochs=2, shuffle=False, verbose=0)
    weights = backend.to_numpy(net.params).copy()
    same = all(np.array_equal(w, weights) for w in hvd.allgather_object(weights))
    return weights, same


plain, _ = fit_weights(hvd.DistributedOptimizer(optimizers.SGD(0.1 * size)))
# op=hvd.Sum: the ranks' gradients added, i.e. size times the mean: like a size-times larger rate.
summed, same = fit_weights(hvd.DistributedOptimizer(optimizers.SGD(0.1), op=hvd.Sum))
check("fit_sum", same and np.abs(summed - plain).max() < 1e-6, np.abs(summed - plain).max())
# compression=fp16: gradients cross as float16 through a communicator of that compression.
compressed, same = fit_weights(hvd.DistributedOptimizer(optimizers.SGD(0.1 * size), compression=hvd.Compression.fp16))
check("fit_fp16", same and 0 < np.abs(compressed - plain).max() < 1e-2, np.abs(compressed - plain).max())
hvd.shutdown()
check("shutdown", True)
