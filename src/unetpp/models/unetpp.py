"""UNet++ (Zhou et al., DLMIA 2018): nested, dense skip pathways with deep supervision.

Nodes X^{i,j}: row ``i`` is the resolution (``i`` poolings), column ``j`` the position along
the skip pathway. With ``H`` a :class:`~unetpp.models.blocks.ConvBlock` and ``U`` an
upsampling:

    x^{0,0} = H(input)
    x^{i,0} = H(pool(x^{i-1,0}))
    x^{i,j} = H([x^{i,0}, ..., x^{i,j-1}, U(x^{i+1,j-1})])     for j > 0

A 1x1 conv head reads every X^{0,j} (deep supervision), giving one output per *level*
j = 1..depth. The nodes that head ``L`` depends on are exactly those with ``i + j <= L``,
so the forward pass runs level by level (anti-diagonals ``s = i + j``) and a network
pruned to level ``L`` is the same loop stopped at ``s = L``: :meth:`UNetPlusPlus.prune`
returns a module that holds and runs only those nodes, sharing the trained weights.
"""

from __future__ import annotations

import torch
from torch import nn

from .blocks import ConvBlock, Up, conv_nd, crop_to, max_pool, pad_to_multiple
from .config import ModelConfig
from .registry import register_arch


def _check_input(x: torch.Tensor, cfg: ModelConfig) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"expected a torch.Tensor, got {type(x).__name__}")
    want = cfg.dims + 2
    if x.dim() != want:
        layout = "(N, C, H, W)" if cfg.dims == 2 else "(N, C, D, H, W)"
        raise ValueError(f"expected a {want}-D tensor {layout} for a {cfg.dims}D model, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[1] != cfg.in_channels:
        raise ValueError(f"expected {cfg.in_channels} input channel(s), got {x.shape[1]} "
                         f"(shape {tuple(x.shape)})")


@register_arch("unetpp", base_filters=32, label="UNet++", deep_supervision=True,
               description="UNet++ with nested dense skips; deep supervision and pruning")
class UNetPlusPlus(nn.Module):
    """UNet++ for 2D or 3D images, depth a parameter, optional deep supervision.

    Args:
        config: a :class:`ModelConfig` with ``arch="unetpp"``.

    Input ``(N, in_channels, *S)`` with ``len(S) == dims``, any spatial size (padded to a
    multiple of ``config.pad_multiple`` per axis inside, ``2**depth`` unless ``config.strides``
    says otherwise, and cropped back). Output: logits ``(N, classes, *S)``;
    with deep supervision a ``dict`` ``{level: logits}`` for levels 1..depth.

    Example:
        >>> from unetpp import create_model
        >>> model = create_model("unetpp", preset="paper", dims=2)
        >>> out = model(torch.zeros(1, 1, 64, 64))
        >>> sorted(out), tuple(out[4].shape)
        ([1, 2, 3, 4], (1, 1, 64, 64))
        >>> fast = model.prune(2)              # X^{i,j} with i + j <= 2 only, same weights
        >>> tuple(fast(torch.zeros(1, 1, 64, 64)).shape)
        (1, 1, 64, 64)
    """

    def __init__(self, config: ModelConfig, level: int | None = None):
        super().__init__()
        if config.arch != "unetpp":
            raise ValueError(f"UNetPlusPlus needs arch='unetpp', got {config.arch!r}")
        self.config = config
        # ``level`` < depth builds UNet++ L<level> (what :meth:`prune` returns): the nodes with
        # i + j <= level and that one head. It keeps the full network's padding multiple:
        # padding to a smaller one would change what the border pixels see, and its output
        # would no longer equal the full network's head. One multiple per spatial axis.
        self.pad_multiple: tuple[int, ...] = config.pad_multiple
        self.depth = config.depth if level is None else level
        #: levels this module returns; a dict of them unless ``single_output``.
        self.output_levels: tuple[int, ...] = config.levels if level is None else (level,)
        self.single_output = level is not None or not config.deep_supervision
        k, strides, kernels = config.filters, config.pool_strides, config.conv_kernels
        d, norm, act = config.dims, config.norm, config.act
        self.nodes = nn.ModuleDict()
        self.ups = nn.ModuleDict()
        for s in range(self.depth + 1):  # level by level, the order forward runs them
            for j in range(s + 1):
                i = s - j
                if j == 0:
                    c_in = config.in_channels if i == 0 else k[i - 1]
                else:
                    # row i+1 -> row i undoes the pooling of level i+1
                    self.ups[f"{i}_{j}"] = Up(d, k[i + 1], k[i], config.up, stride=strides[i])
                    c_in = (j + 1) * k[i]  # j same-row skips plus the upsampled tensor
                self.nodes[f"{i}_{j}"] = ConvBlock(d, c_in, k[i], norm, act, kernel_size=kernels[i])
        conv = conv_nd(d)
        self.heads = nn.ModuleDict({str(lv): conv(k[0], config.classes, kernel_size=1)
                                    for lv in self.output_levels})

    @property
    def levels(self) -> tuple[int, ...]:
        """The levels this module can output."""
        return self.output_levels

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[int, torch.Tensor]:
        _check_input(x, self.config)
        x, spatial = pad_to_multiple(x, self.pad_multiple)
        nodes: dict[tuple[int, int], torch.Tensor] = {(0, 0): self.nodes["0_0"](x)}
        strides = self.config.pool_strides
        for s in range(1, self.depth + 1):
            nodes[(s, 0)] = self.nodes[f"{s}_0"](max_pool(nodes[(s - 1, 0)], strides[s - 1]))
            for j in range(1, s + 1):
                i = s - j
                up = self.ups[f"{i}_{j}"](nodes[(i + 1, j - 1)])
                nodes[(i, j)] = self.nodes[f"{i}_{j}"]([nodes[(i, c)] for c in range(j)] + [up])
        out = {level: crop_to(self.heads[str(level)](nodes[(0, level)]), spatial)
               for level in self.output_levels}
        if self.single_output:
            return out[self.output_levels[-1]]
        return out

    def prune(self, level: int) -> "UNetPlusPlus":
        """UNet++ L``level``: a module holding only nodes with ``i + j <= level`` and the head
        of ``level``, sharing this model's parameters (no copy). It returns one tensor.

        Raises ValueError if ``level`` is outside 1..depth or has no head (a model trained
        without deep supervision has only the deepest head).
        """
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= self.depth:
            raise ValueError(f"level must be an integer in 1..{self.depth}, got {level!r}")
        if str(level) not in self.heads:
            raise ValueError(f"this model has no head at level {level} (heads: "
                             f"{', '.join(self.heads)}); levels below {self.depth} need a model "
                             "trained with deep supervision")
        with torch.device("meta"):  # the structure only: the parameters are this model's
            pruned = UNetPlusPlus(self.config, level=level)
        for name in ("nodes", "ups", "heads"):
            mine = getattr(self, name)
            setattr(pruned, name, nn.ModuleDict({key: mine[key] for key in getattr(pruned, name)}))
        cfg = self.config
        pruned.config = cfg.replace(  # the topology of the rows it keeps
            depth=level, deep_supervision=False,
            strides=None if cfg.strides is None else cfg.strides[:level],
            kernel_sizes=None if cfg.kernel_sizes is None else cfg.kernel_sizes[:level + 1])
        pruned.pad_multiple = self.pad_multiple  # a pruned network of a pruned network too
        pruned.train(self.training)
        return pruned
