"""Gated adapters: a LoRA delta that acts only at SPACE mask positions, so the base model stays exact.

"Your LLM Knows the Future" (arXiv 2507.11851) trains a LoRA that is switched on only for mask tokens.
Every ordinary token then runs the frozen base weights, the verification logits of SPACE decoding are the
ORIGINAL model's, and SPACE output is lossless against the original model, not a fine-tuned copy.

What is installed (`install_gated_adapters`):

- on each target linear layer (attention and MLP projections by default), a child `space_adapter`
  (`lora_A`, `lora_B`, zero-initialised B) and a forward hook that adds `B(A(x)) * alpha / rank` to the
  layer's output at mask rows only. The delta is computed on the mask rows alone and written into them
  with `index_put`; every other row of the output is the base layer's own output, bit for bit. No
  `0 * delta` is ever added anywhere. These hooks are attached only while forwards contain mask tokens
  (the embedding's hook attaches or detaches them as each forward starts), so plain decoding of a gated
  model runs as fast as the original model (idle hooks are not free on a CPU; BENCHMARKS.md,
  `benchmarks/gated_pass.py`).
- on the input embedding, a child `space_mask` holding a learned mask-token embedding (initialised from
  the embedding row of the mask token) and a forward hook that records where the mask token is in
  `input_ids` and puts the learned embedding there. The embedding matrix itself (tied to the LM head in
  many models) is untouched, so no logit of any ordinary position changes. With
  `per_position_mask_embeddings` it holds one embedding per mask of a group (`num_mask_tokens` rows): mask j
  of a group then knows it drafts the token j + 2 ahead from its input alone, not only from its position id.
  Both SPACE's layout and the training collator put each group's masks in one run, groups back to back, so
  mask j is the one at offset j (modulo the group size) in its run of mask tokens (`mask_indices_in_groups`);
  the group size is the trained `num_mask_tokens`, or what SPACE decoding runs (`masks_per_group`: its
  layout may run fewer masks than were trained).
- on the decoder body, a forward pre-hook that forgets the previous forward's mask positions, so a
  forward fed `inputs_embeds` (the embedding is not called) runs the plain base model.

Decoding takes a faster path (`decoding_products`, opened by SPACE decoding around its loop). A SPACE pass has
only a few mask rows, so each adapter's two small products cost far less than the tensor operations around them
(BENCHMARKS.md, `benchmarks/gated_pass.py`, measures both paths). While the context is open (and gradients are
off, the model not training, every row's masks in the same contiguous columns, as SPACE's layout puts them:
`mask_column_span`), each adapter reads pre-transposed, pre-scaled copies of its weights; adapters whose layers
read the same input (q/k/v, gate/up: `SHARED_INPUT_TARGETS`) share one product with their stacked A matrices;
and the delta is added in place on the mask columns with one `addmm_`/`baddbmm_` instead of advanced indexing
and `index_put` on a copy. Half-precision adapters on a CPU get fp32 copies (`decoding_product_dtype`).

Threads: what a forward records (its mask positions, the shared products of its inputs, whether the fast path
is open) is kept per thread, so several threads may run plain and SPACE forwards of one gated model at once
and each gets what it would get alone (tests/test_gated.py runs them side by side).

Which positions are masks, and why comparing token ids is exact here: the mask token id never appears in
a model's `input_ids` except at mask positions. SPACE decoding refuses prompts that contain it and never
generates or drafts it (it is suppressed in plain decoding too), and `SpaceTrainer` refuses training rows
that contain it. So `input_ids == mask_token_id`, recorded once per forward into one small object shared
by every adapter of the model (`MaskPositions`), marks exactly the mask positions. Code that feeds the
mask token itself to a gated model gets the adapter at those positions, by construction.

The adapter weights are ordinary parameters (`...q_proj.space_adapter.lora_A.weight`,
`...embed_tokens.space_mask.weight`), so `save_pretrained` writes them into the same safetensors as the
base weights, under names that leave every base key unchanged: loading a gated checkpoint with the plain
model class gives the original model back (the adapter keys are reported unused). The SPACE model class
rebuilds the adapters in `__init__` when its `SpaceConfig.mode` is "gated", so `from_pretrained`
loads them too. Gradient checkpointing is fine: recomputation runs inside the same training step, while
the recorded positions are still those of the forward being recomputed.

Imports only torch, transformers and sibling modules (it ships as remote code).
"""

from __future__ import annotations

import contextlib
import math
import threading
import weakref
from collections.abc import Iterator

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from .architectures import SUPPORTED_MODEL_TYPES, arch_spec
from .configuration import SpaceConfig
from .draft_head import draft_head_of, install_draft_head

# Sibling layers that are called with the same input tensor; checked by identity at run time, so a model that
# does otherwise is still right, only slower.
SHARED_INPUT_TARGETS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def default_target_modules(model) -> list[str]:
    """The architecture's attention and MLP projections (`architectures.py`); for others, every linear layer of
    the body."""
    model_type = getattr(model.config, "model_type", None)
    if model_type in SUPPORTED_MODEL_TYPES:
        return list(arch_spec(model_type).adapter_targets)
    body = model.base_model
    return sorted({name.split(".")[-1] for name, module in body.named_modules() if _is_linear(module)})


class MaskPositions:
    """Where the mask token sits in the current forward's `input_ids`; shared by all adapters of a model.

    What one forward records (`where`, `span`, `shape`) and whether decoding's fast path is open (`decoding`)
    are kept per thread (`_thread_state`), so a plain forward in one thread never sees the mask positions of a
    SPACE pass running in another. The layer hooks are attached while at least one thread's latest forward
    held mask tokens (`masked_threads`); for the other threads they find no positions and change nothing.
    """

    def __init__(self, mask_token_id: int):
        self.mask_token_id = mask_token_id
        self.hook_handles: list = []  # the embedding's and the body's hooks: always attached
        self.layers: list[nn.Module] = []  # the target layers, whose hooks are attached while masks are present
        self.shared_input_groups: list[list[nn.Module]] = []  # the same layers, see `shared_input_groups`
        self.layer_hook_handles: list = []
        self.masked_threads = 0  # threads whose latest forward held mask tokens
        self.prepared_from: tuple | None = None  # fingerprint of the adapter weights the copies were made of
        self.shared_products: list[SharedLowRank] = []

    def _state(self) -> _ThreadState:
        return _thread_state(self)

    where = property(lambda self: self._state().where)  # (batch indices, sequence indices) of the masks, or None
    group_sizes = property(lambda self: self._state().group_sizes)  # see `masks_per_group`
    span = property(lambda self: self._state().span)  # (start, stop) columns when `mask_column_span` finds one
    shape = property(lambda self: self._state().shape)  # [batch, sequence] of the recorded input_ids

    @property
    def decoding(self) -> bool:
        """True while `decoding_products` is open in this thread."""
        return self._state().decoding

    @decoding.setter
    def decoding(self, value: bool) -> None:
        self._state().decoding = value

    def record(self, input_ids: torch.Tensor) -> None:
        state = self._state()
        is_mask = input_ids == self.mask_token_id  # [batch, sequence]
        state.where = torch.nonzero(is_mask, as_tuple=True) if bool(is_mask.any()) else None
        state.span = mask_column_span(is_mask) if state.where is not None else None
        state.shape = input_ids.shape
        masked = state.where is not None
        if masked != state.counted:
            with _HOOKS_LOCK:
                self.masked_threads += 1 if masked else -1
                state.counted = masked
                self.attach_layer_hooks(self.masked_threads > 0)

    def attach_layer_hooks(self, attached: bool) -> None:
        """Attach the target layers' hooks, or detach them; nothing happens when already so."""
        if attached and not self.layer_hook_handles:
            self.layer_hook_handles = [layer.register_forward_hook(_add_gated_delta) for layer in self.layers]
        elif not attached and self.layer_hook_handles:
            for handle in self.layer_hook_handles:
                handle.remove()
            self.layer_hook_handles = []

    def clear(self) -> None:
        state = self._state()
        state.where = state.span = state.shape = None


class _ThreadState:
    """One thread's view of a model's mask positions (see `MaskPositions`)."""

    def __init__(self):
        self.where: tuple[torch.Tensor, torch.Tensor] | None = None
        self.span: tuple[int, int] | None = None
        self.shape: torch.Size | None = None
        self.decoding = False
        self.group_sizes: list[int] = []  # `masks_per_group` contexts open in this thread, innermost last
        self.counted = False  # counted in MaskPositions.masked_threads
        self.shared_inputs: dict[int, tuple[torch.Tensor, tuple[torch.Tensor, ...]]] = {}  # see SharedLowRank


_THREADS = threading.local()  # .states: {MaskPositions: _ThreadState}, weakly keyed (models come and go)
_HOOKS_LOCK = threading.Lock()  # module-level: models are deep-copied, and locks cannot be
_PREPARE_LOCK = threading.Lock()


def _thread_state(positions: MaskPositions) -> _ThreadState:
    states = getattr(_THREADS, "states", None)
    if states is None:
        states = _THREADS.states = weakref.WeakKeyDictionary()
    state = states.get(positions)
    if state is None:
        state = states[positions] = _ThreadState()
    return state


def mask_column_span(is_mask: torch.Tensor) -> tuple[int, int] | None:
    """(start, stop) when every row of `is_mask` [batch, sequence] is True exactly on columns start..stop-1."""
    columns = torch.nonzero(is_mask[0]).flatten()
    if columns.numel() == 0 or not bool((is_mask == is_mask[:1]).all()):
        return None
    start, stop = int(columns[0]), int(columns[-1]) + 1
    return (start, stop) if stop - start == columns.numel() else None


def mask_indices_in_groups(is_mask: torch.Tensor, masks_per_group: int) -> torch.Tensor:
    """[batch, sequence] index of each mask within its group, -1 at other tokens: its offset in its run of
    consecutive masks, modulo `masks_per_group` (groups of that many masks, back to back)."""
    columns = torch.arange(is_mask.shape[-1], device=is_mask.device)
    last_other = torch.where(is_mask, -1, columns).cummax(dim=-1).values  # the last non-mask column so far
    return torch.where(is_mask, (columns - last_other - 1) % masks_per_group, -1)


class GatedLoraAdapter(nn.Module):
    """The low-rank delta of one linear layer: `lora_B(lora_A(dropout(x))) * alpha / rank`."""

    def __init__(self, in_features: int, out_features: int, rank: int, alpha: float, dropout: float,
                 positions: MaskPositions, dtype=None, device=None):
        super().__init__()
        self.lora_A = nn.Linear(in_features, rank, bias=False, dtype=dtype, device=device)
        self.lora_B = nn.Linear(rank, out_features, bias=False, dtype=dtype, device=device)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scaling = alpha / rank
        self.positions = positions
        self.prepared: PreparedDelta | None = None  # made by `decoding_products`, used while it is open
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:  # rows: [num_masks, in_features]
        rows = rows.to(self.lora_A.weight.dtype)
        return self.lora_B(self.lora_A(self.dropout(rows))) * self.scaling


class GatedMaskEmbedding(nn.Module):
    """The learned input embedding of the mask token, used in place of the embedding matrix's row: one shared
    vector [hidden], or with `per_position_mask_embeddings` one row per mask of a group [num_mask_tokens,
    hidden]."""

    def __init__(self, initial: torch.Tensor, positions: MaskPositions, settings: dict):
        super().__init__()
        rows = settings["mask_embedding_rows"]
        initial = initial.detach().clone()
        self.weight = nn.Parameter(initial if rows == 1 else initial.expand(rows, -1).clone())
        self.positions = positions
        self.settings = settings  # the adapter settings it was installed with (for idempotence checks)

    @property
    def per_position(self) -> bool:
        """From the settings, not `weight.dim()`: ZeRO-3 leaves an empty placeholder there outside forwards."""
        return self.settings["mask_embedding_rows"] > 1

    def forward(self) -> torch.Tensor:
        """The embedding, read through a module call so that ZeRO-3 / FSDP gather it first."""
        return self.weight


class SharedLowRank:
    """The first product of a group of adapters whose layers read the same input: x @ [A_1; A_2; ...]^T.

    The last input and its product are kept per thread (in the caller's `_ThreadState`), matched by identity."""

    def __init__(self, stacked_a_t: torch.Tensor, ranks: list[int]):
        self.stacked_a_t = stacked_a_t  # [in_features, sum of ranks]
        self.ranks = ranks

    def parts_for(self, hidden: torch.Tensor, start: int, stop: int, state: _ThreadState) -> tuple[torch.Tensor, ...]:
        cache = state.shared_inputs
        last = cache.get(id(self))
        if last is None or last[0] is not hidden:
            rows = hidden[0, start:stop] if hidden.shape[0] == 1 else hidden[:, start:stop]
            product = torch.matmul(rows.to(self.stacked_a_t.dtype), self.stacked_a_t)
            last = (hidden, product.split(self.ranks, dim=-1) if len(self.ranks) > 1 else (product,))
            cache[id(self)] = last
        return last[1]


class PreparedDelta:
    """One adapter's weights as decoding uses them: its share of a `SharedLowRank`, and scaling * B^T."""

    def __init__(self, shared: SharedLowRank, member: int, scaled_b_t: torch.Tensor):
        self.shared, self.member, self.scaled_b_t = shared, member, scaled_b_t


def _add_gated_delta(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a target layer: output + delta at the mask rows, the untouched output elsewhere."""
    adapter = module.space_adapter
    state = adapter.positions._state()  # this thread's forward
    if state.where is None:
        return output
    hidden = args[0]  # [batch, sequence, in_features]
    if hidden.shape[:-1] != state.shape:
        raise RuntimeError(
            f"Gated SPACE adapter: layer input of shape {tuple(hidden.shape)} does not match the input_ids "
            f"shape {tuple(state.shape)} recorded for this forward."
        )
    prepared = adapter.prepared
    if (state.decoding and state.span is not None and not (torch.is_grad_enabled() or adapter.training)
            and hidden.dtype == output.dtype):
        start, stop = state.span  # decoding: see the module docstring
        low_rank = prepared.shared.parts_for(hidden, start, stop, state)[prepared.member]
        if prepared.scaled_b_t.dtype != output.dtype:  # half precision on a CPU: products in fp32, see above
            delta = torch.matmul(low_rank, prepared.scaled_b_t).to(output.dtype)
            target = output[0, start:stop] if hidden.shape[0] == 1 else output[:, start:stop]
            target.add_(delta)
        elif hidden.shape[0] == 1:
            output[0, start:stop].addmm_(low_rank, prepared.scaled_b_t)
        else:
            output[:, start:stop].baddbmm_(low_rank, prepared.scaled_b_t.expand(hidden.shape[0], -1, -1))
        return output
    delta = adapter(hidden[state.where]).to(output.dtype)  # [num_masks, out_features]
    return output.index_put(state.where, delta, accumulate=True)


@contextlib.contextmanager
def decoding_products(model) -> Iterator[None]:
    """While open, the gated adapters of `model` take the decoding fast path (module docstring).

    The path reads copies of the adapter weights, kept between calls (one more copy of the adapters in
    memory) and made again on entry when any adapter weight has changed since (its version counter or
    storage), so that short `generate` calls (SPACE as an assistant drafts a few tokens per call) do not pay
    for making them each time. Do not train inside. Nothing happens for models without gated adapters, or
    when already open."""
    if not has_gated_adapters(model):
        yield
        return
    positions = model.get_input_embeddings().space_mask.positions
    if positions.decoding:
        yield
        return
    weights = [weight for layer in positions.layers for weight in (
        layer.space_adapter.lora_A.weight, layer.space_adapter.lora_B.weight)]
    source = weights_fingerprint(weights)
    with _PREPARE_LOCK:
        if source != positions.prepared_from:
            _prepare_decoding_products(positions)
            positions.prepared_from = source
    positions.decoding = True
    try:
        yield
    finally:
        positions.decoding = False
        positions._state().shared_inputs.clear()  # no reference to the last forward's tensors outlives the context


@torch.no_grad()
def weights_fingerprint(weights: list[torch.Tensor]) -> tuple:
    """Where the weights live and what they hold, cheaply: storage address and a float64 sum and sum of squares
    per tensor. Version counters alone miss updates through `.data` (and inference tensors have none)."""
    sums = torch.stack([torch.stack([w.sum(dtype=torch.float64), w.square().sum(dtype=torch.float64)])
                        for w in weights])
    return tuple(w.data_ptr() for w in weights), tuple(sums.flatten().tolist())


def decoding_product_dtype(weight: torch.Tensor) -> torch.dtype:
    """The dtype of the decoding path's low-rank products: fp32 for half-precision adapters on a CPU.

    Why: there a bf16 product of a few rows costs several times an fp32 one (BENCHMARKS.md, "Gated adapters'
    products in fp32 on a CPU": on Qwen2.5-Coder-0.5B in bf16 the adapters took ~24 ms of a ~97 ms pass). Only
    the mask rows' deltas change, by about bf16 rounding; the rows that verify are the base model's either way."""
    if weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float16):
        return torch.float32
    return weight.dtype


def _prepare_decoding_products(positions: MaskPositions) -> None:
    positions.shared_products = []
    with torch.no_grad():
        for group in positions.shared_input_groups:
            adapters = [layer.space_adapter for layer in group]
            dtype = decoding_product_dtype(adapters[0].lora_A.weight)
            stacked_a_t = torch.cat([adapter.lora_A.weight for adapter in adapters]).t().to(dtype).contiguous()
            shared = SharedLowRank(stacked_a_t, [adapter.lora_A.weight.shape[0] for adapter in adapters])
            positions.shared_products.append(shared)
            for member, adapter in enumerate(adapters):
                scaled_b_t = (adapter.lora_B.weight.t().to(dtype) * adapter.scaling).contiguous()
                adapter.prepared = PreparedDelta(shared, member, scaled_b_t)


def shared_input_groups(named_layers: list[tuple[str, nn.Module]]) -> list[list[nn.Module]]:
    """The target layers grouped by shared input: siblings named in one entry of SHARED_INPUT_TARGETS; others
    alone."""
    groups: dict[tuple[str, int | str], list[nn.Module]] = {}
    for name, layer in named_layers:
        parent, _, leaf = name.rpartition(".")
        shared = [index for index, names in enumerate(SHARED_INPUT_TARGETS) if leaf in names]
        groups.setdefault((parent, shared[0]) if shared else (name, leaf), []).append(layer)
    return list(groups.values())


def _use_mask_embedding(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
    """Forward hook of the input embedding: record the mask positions, put the learned mask embedding there."""
    gate = module.space_mask
    input_ids = args[0] if args else kwargs["input"]
    gate.positions.record(input_ids)
    where = gate.positions.where
    if where is None:
        return output
    weight = gate().to(output.dtype)
    if not gate.per_position:
        return output.index_put(where, weight.expand(where[0].shape[0], -1))
    group_sizes = gate.positions.group_sizes
    group_size = group_sizes[-1] if group_sizes else weight.shape[0]
    indices = mask_indices_in_groups(input_ids == gate.positions.mask_token_id, group_size)
    return output.index_put(where, weight[indices[where]])


@contextlib.contextmanager
def masks_per_group(model, count: int) -> Iterator[None]:
    """While open, this thread's forwards of `model` read mask runs as groups of `count` masks (SPACE decoding
    opens it with its layout's masks per group, which may be fewer than the trained `num_mask_tokens`, the
    default). Only per-position mask embeddings depend on it; nothing happens for models without gated
    adapters."""
    if not has_gated_adapters(model):
        yield
        return
    gate = model.get_input_embeddings().space_mask
    trained = gate.settings["mask_embedding_rows"]
    if trained > 1 and not 1 <= count <= trained:
        raise ValueError(f"masks_per_group should lie in 1..{trained} (the trained masks per group), got {count}.")
    group_sizes = gate.positions.group_sizes
    group_sizes.append(count)
    try:
        yield
    finally:
        group_sizes.pop()


def _forget_mask_positions(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of the body: a new forward starts with no mask positions until the embedding runs."""
    module.get_input_embeddings().space_mask.positions.clear()


def gated_settings(space_config: SpaceConfig, model) -> dict:
    """The adapter settings that shape the weights, with the default target modules filled in."""
    return {
        "mask_token_id": space_config.mask_token_id,
        "rank": space_config.adapter_rank,
        "alpha": space_config.adapter_alpha,
        "dropout": space_config.adapter_dropout,
        "target_modules": list(space_config.adapter_target_modules or default_target_modules(model)),
        "mask_embedding_rows": space_config.num_mask_tokens if space_config.per_position_mask_embeddings else 1,
    }


def has_gated_adapters(model) -> bool:
    return hasattr(model.get_input_embeddings(), "space_mask")


def install_gated_adapters(model, space_config: SpaceConfig | dict):
    """Install the gated adapters `space_config` describes (a `SpaceConfig`; a saved dict is read with
    `SpaceConfig.from_dict`); freeze everything else. Idempotent.

    Returns the model. Calling it again with the same settings changes nothing; other settings are refused.
    """
    if isinstance(space_config, dict):
        space_config = SpaceConfig.from_dict(space_config)
    if space_config.mask_token_id is None:
        raise ValueError("Gated adapters need `space_config['mask_token_id']`; call `add_space_support` first.")
    settings = gated_settings(space_config, model)
    embedding = model.get_input_embeddings()
    if has_gated_adapters(model):
        installed = embedding.space_mask.settings
        if {k: v for k, v in installed.items() if k != "dropout"} != {
            k: v for k, v in settings.items() if k != "dropout"
        }:
            raise ValueError(
                f"This model already carries gated SPACE adapters with settings {installed}, not {settings}. "
                "Remove them first with `remove_gated_adapters(model)`."
            )
        _install_draft_head(model, space_config)
        return model

    targets = _target_layers(model, settings["target_modules"])
    positions = MaskPositions(settings["mask_token_id"])
    model.requires_grad_(False)
    for _, layer in targets:
        weight = layer.weight
        in_features, out_features = (weight.shape[0], weight.shape[1]) if isinstance(layer, Conv1D) else (
            weight.shape[1], weight.shape[0])
        layer.space_adapter = GatedLoraAdapter(
            in_features, out_features, settings["rank"], settings["alpha"], settings["dropout"], positions,
            dtype=weight.dtype, device=weight.device,
        )
        positions.layers.append(layer)
    positions.shared_input_groups = shared_input_groups(targets)
    embedding.space_mask = GatedMaskEmbedding(embedding.weight[settings["mask_token_id"]], positions, settings)
    positions.hook_handles.append(embedding.register_forward_hook(_use_mask_embedding, with_kwargs=True))
    positions.hook_handles.append(model.base_model.register_forward_pre_hook(_forget_mask_positions))
    for parameter in gated_parameters(model):
        parameter.requires_grad_(True)
    for module in model.modules():  # new modules start in train mode; follow the model's (eval: the fast path)
        if isinstance(module, (GatedLoraAdapter, GatedMaskEmbedding)):
            module.train(model.training)
    _install_draft_head(model, space_config)
    return model


def _install_draft_head(model, space_config: SpaceConfig) -> None:
    """The draft head the settings ask for (`draft_head.py`), added to a model whose adapters may be trained
    already; it stays frozen here, as everything installed (`SpaceTrainer` chooses what trains)."""
    if space_config.draft_head_width:
        install_draft_head(model, space_config.draft_head_width).requires_grad_(False)
    elif draft_head_of(model) is not None:
        raise ValueError("This model carries a draft head; its SPACE settings should keep `draft_head_width`.")


def gated_parameters(model) -> list[nn.Parameter]:
    """The trainable parameters of the gated adapters (empty when none are installed)."""
    return [
        parameter
        for module in model.modules()
        if isinstance(module, (GatedLoraAdapter, GatedMaskEmbedding))
        for parameter in module.parameters()
    ]


def remove_gated_adapters(model):
    """Take the gated adapters off and return the plain model (SPACE support and base weights unchanged).

    `config.space_config["mode"]` becomes "full", so saving and reloading does not rebuild adapters. The
    base weights stay frozen as they were; call `model.requires_grad_(True)` to train them.
    """
    if not has_gated_adapters(model):
        return model
    embedding = model.get_input_embeddings()
    positions = embedding.space_mask.positions
    positions.attach_layer_hooks(False)
    for handle in positions.hook_handles:
        handle.remove()
    for module in list(model.modules()):
        if isinstance(getattr(module, "space_adapter", None), GatedLoraAdapter):
            del module.space_adapter
    del embedding.space_mask
    if draft_head_of(model) is not None:
        del model.get_output_embeddings().space_draft_head
    if SpaceConfig.is_set(model):
        space_config = SpaceConfig.of(model)
        if space_config.mode == "gated":
            space_config.mode = "full"
            space_config.per_position_mask_embeddings = False
            space_config.draft_head_width = 0
            space_config.draft_head_trains_adapter = False
            space_config.save_to(model)
    return model


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, Conv1D))


def _target_layers(model, target_modules: list[str]) -> list[tuple[str, nn.Module]]:
    body = model.base_model
    layers = [(name, module) for name, module in body.named_modules() if _is_linear(module) and
              name.split(".")[-1] in target_modules]
    if not layers:
        available = sorted({name.split(".")[-1] for name, module in body.named_modules() if _is_linear(module)})
        raise ValueError(
            f"`adapter_target_modules`={target_modules} matches no linear layer of {type(model).__name__}; "
            f"its linear layers are named {available}."
        )
    return layers
