"""Draws docs/pass_layout.png: the attention mask of one SPACE pass, made by the library's own layout code.

    python docs/make_figures.py

k = 3 masks per group, 3 candidates from the previous pass, every group (the paper's layout), 4 cached tokens.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from transformers_space.decoding.layout import build_pass_layout  # noqa: E402

MASK, CACHED, K, CANDIDATES = 99, 4, 3, 3


def main() -> Path:
    cache_positions = torch.arange(CACHED)[None]
    fresh = torch.tensor([[10]])
    layout = build_pass_layout(fresh, torch.tensor([[CACHED]]), torch.tensor([[11, 12, 13]]), cache_positions, MASK,
                               K, group_after=list(range(CANDIDATES + 1)))
    visible = layout.visible[0].float().numpy()
    rows = ["t"] + [f"c{i}" for i in range(1, CANDIDATES + 1)]
    rows += [f"G{g} m{j}" for g in range(CANDIDATES + 1) for j in range(1, K + 1)]
    columns = [f"cache {i}" for i in range(CACHED)] + rows
    figure, axes = plt.subplots(figsize=(9, 6.5))
    axes.imshow(visible, cmap="gray", vmin=0, vmax=1)
    axes.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    labels = [f"{name}  (pos {int(p)})" for name, p in zip(rows, layout.position_ids[0], strict=True)]
    axes.set_yticks(range(len(rows)), labels, fontsize=7)
    axes.set_xlabel("key (what is attended to)")
    axes.set_ylabel("query (token of the pass, with its position id)")
    axes.set_title("One SPACE pass, k=3, 3 candidates, every group (white: visible)")
    figure.tight_layout()
    path = Path(__file__).with_name("pass_layout.png")
    figure.savefig(path, dpi=110)
    return path


if __name__ == "__main__":
    print(main())
