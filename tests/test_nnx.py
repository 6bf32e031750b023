"""flax nnx without friction: masks straight from ``nnx.Optimizer`` feed every mask consumer.

``nnx.Optimizer`` wraps its optax state in ``OptVariable`` leaves, while
``nnx.state(model, nnx.Param)`` holds ``Param`` leaves: the two trees differ by wrapper type.
References below are numpy computations on the raw arrays.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

nnx = pytest.importorskip("flax.nnx")

import jaxprune  # noqa: E402
from jaxprune import transforms  # noqa: E402
from jaxprune.core import is_variable, unwrap_variables  # noqa: E402

X = jnp.linspace(-1.0, 1.0, 16).reshape(2, 8)


def _loss(model):
  return (model(X) ** 2).sum()


def _trained(score=None, **update_kwargs):
  """An nnx.Linear after one nnx.Optimizer step with prune (every step, 50%)."""
  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  before = np.asarray(model.kernel[...])
  tx = optax.chain(optax.sgd(0.1), transforms.prune(score, sparsity=0.5, every=1))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(_loss)(model)
    optimizer.update(model, grads, **{k: grads for k in update_kwargs})

  step(model, optimizer)
  return model, optimizer, before


def _kernel_mask(masks):
  return np.asarray(unwrap_variables(masks)["kernel"])


def test_masks_of_nnx_optimizer_are_wrapped_variables():
  _, optimizer, _ = _trained()
  masks = transforms.masks_of(optimizer.opt_state)
  assert is_variable(masks["kernel"])  # what flax gives: the case the consumers must accept
  assert _kernel_mask(masks).sum() == 16


def test_apply_masks_on_nnx_state_keeps_the_structure():
  model, optimizer, _ = _trained()
  masks = transforms.masks_of(optimizer.opt_state)
  params = nnx.state(model, nnx.Param)
  out = jaxprune.apply_masks(params, masks)
  assert isinstance(out, nnx.State) and isinstance(out["kernel"], nnx.Param)
  kernel = np.asarray(params["kernel"][...])
  np.testing.assert_array_equal(np.asarray(out["kernel"][...]),
                                np.where(_kernel_mask(masks), kernel, 0.0))
  nnx.update(model, out)  # the documented write-back works on the result
  assert int((np.asarray(model.kernel[...]) == 0).sum()) == 16


def test_topk_previous_from_nnx_optimizer():
  model, optimizer, _ = _trained()
  previous = transforms.masks_of(optimizer.opt_state)
  params = nnx.state(model, nnx.Param)
  new = jaxprune.masks.topk(jaxprune.scores.magnitude(params), 0.75, previous=previous)
  new_kernel = np.asarray(unwrap_variables(new)["kernel"])
  assert new_kernel.sum() == 8
  assert not (new_kernel & ~_kernel_mask(previous)).any()  # pruned entries stay pruned


def test_export_compress_and_save_accept_nnx_inputs(tmp_path):
  model, optimizer, _ = _trained()
  masks = transforms.masks_of(optimizer.opt_state)
  params = nnx.state(model, nnx.Param)
  expected = np.where(_kernel_mask(masks), np.asarray(params["kernel"][...]), 0.0)
  restored, restored_masks = jaxprune.export.decompress(jaxprune.export.compress(params, masks))
  np.testing.assert_array_equal(np.asarray(restored["kernel"]), expected)
  np.testing.assert_array_equal(np.asarray(restored_masks["kernel"]), _kernel_mask(masks))
  path = jaxprune.export.save(os.fspath(tmp_path / "nnx"), params, masks)
  loaded, loaded_masks = jaxprune.export.load(path)
  np.testing.assert_array_equal(np.asarray(loaded["kernel"]), expected)
  np.testing.assert_array_equal(np.asarray(loaded_masks["kernel"]), _kernel_mask(masks))
  assert loaded_masks["bias"] is None


def test_score_inputs_through_nnx_optimizer_update_under_another_name():
  # nnx.Optimizer.update(model, grads, **kwargs) forwards kwargs to tx.update; `grads=` collides
  # with its own argument, so the score takes the gradients under another keyword.
  def score(params, *, gradients):
    return jaxprune.scores.saliency(params, gradients)

  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  kernel = np.asarray(model.kernel[...])
  grads = np.asarray(nnx.grad(_loss)(model)["kernel"][...])
  _, optimizer, _ = _trained(score, gradients=True)
  mask = _kernel_mask(transforms.masks_of(optimizer.opt_state))
  saliency = np.abs(kernel * grads).ravel()
  expected = np.zeros(saliency.size, bool)
  expected[np.argsort(-saliency, kind="stable")[:16]] = True
  np.testing.assert_array_equal(mask.ravel(), expected)


def test_grads_keyword_collides_with_nnx_optimizer_update():
  model = nnx.Linear(8, 4, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  grads = nnx.grad(_loss)(model)
  with pytest.raises(TypeError, match="grads"):
    optimizer.update(model, grads, grads=grads)


def test_unwrap_variables_leaves_plain_trees_alone():
  tree = {"w": jnp.ones(2), "b": None}
  assert unwrap_variables(tree) is tree or jax.tree.structure(unwrap_variables(tree)) == \
      jax.tree.structure(tree)
  assert not is_variable(tree["w"])
  assert is_variable(nnx.Param(jnp.ones(2)))
  assert isinstance(unwrap_variables(nnx.Param(jnp.ones(2))), jax.Array)
