"""The parameters by their HF names: their shapes, HF's random init, and the weights of a folder read into a params
pytree and written back. Hub weights load here, and what is written loads in transformers.

The weights are model.safetensors (HF BertModel keys, or model.safetensors.index.json and its shards). Only
safetensors are ever read: no pickle (`pytorch_model.bin`) and no code from the folder. The plain path needs three
files of a folder, each read by its chapter:

    cfg = Config.from_json(folder / "config.json")
    params = load_params(folder, cfg)
    tokenizer = Tokenizer.from_file(folder / "tokenizer.json", max_length=256)

The rest of a folder (vocab.txt, the tokenizer configs, sentence-transformers' modules) is st/folder.py's, which
writes every folder whole or not at all (run/atomic.py).
"""
import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy

from minilm.config import Config, read_json

SKIPPED = ("embeddings.position_ids",)  # an int64 buffer (0..P-1) older transformers saved; not a parameter
LEGACY_NAMES = {"gamma": "weight", "beta": "bias"}  # TF-converted BERT files name LayerNorm params gamma/beta


# ----------------------------------------------------------------------------------------------------------------
# Parameters: one table of HF names and shapes drives init, checkpoint validation and tests.


def layer_param_shapes(cfg: Config) -> dict[str, tuple[int, ...]]:
    D, F = cfg.hidden_size, cfg.intermediate_size
    return {
        "attention.self.query.weight": (D, D), "attention.self.query.bias": (D,),
        "attention.self.key.weight": (D, D), "attention.self.key.bias": (D,),
        "attention.self.value.weight": (D, D), "attention.self.value.bias": (D,),
        "attention.output.dense.weight": (D, D), "attention.output.dense.bias": (D,),
        "attention.output.LayerNorm.weight": (D,), "attention.output.LayerNorm.bias": (D,),
        "intermediate.dense.weight": (F, D), "intermediate.dense.bias": (F,),
        "output.dense.weight": (D, F), "output.dense.bias": (D,),
        "output.LayerNorm.weight": (D,), "output.LayerNorm.bias": (D,),
    }


def param_shapes(cfg: Config, pooler: bool = True) -> dict[str, tuple[int, ...]]:
    """Every learnable tensor of BertModel, by its HF safetensors key. The pooler is unused by mean pooling
    but kept so that a Hub checkpoint round-trips; BertModel(add_pooling_layer=False) files lack it."""
    D = cfg.hidden_size
    shapes = {
        "embeddings.word_embeddings.weight": (cfg.vocab_size, D),
        "embeddings.position_embeddings.weight": (cfg.max_position_embeddings, D),
        "embeddings.token_type_embeddings.weight": (cfg.type_vocab_size, D),
        "embeddings.LayerNorm.weight": (D,), "embeddings.LayerNorm.bias": (D,),
    }
    for i in range(cfg.num_hidden_layers):
        shapes.update({f"encoder.layer.{i}.{k}": s for k, s in layer_param_shapes(cfg).items()})
    if pooler:
        shapes.update({"pooler.dense.weight": (D, D), "pooler.dense.bias": (D,)})
    return shapes


def flatten(params: dict, prefix: str = "") -> dict:
    """Nested dict (lists for `encoder.layer`) -> {HF key: array}."""
    items = enumerate(params) if isinstance(params, list) else params.items()
    flat = {}
    for k, v in items:
        key = f"{prefix}{k}"
        flat.update(flatten(v, key + ".") if isinstance(v, (dict, list)) else {key: v})
    return flat


def unflatten(flat: dict) -> dict:
    """{HF key: array} -> nested dict; a level whose keys are 0..n-1 becomes a list (encoder.layer)."""
    tree = {}
    for key, value in flat.items():
        *path, leaf = key.split(".")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value

    def listify(node):
        if not isinstance(node, dict):
            return node
        node = {k: listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node) and sorted(map(int, node)) == list(range(len(node))):
            return [node[str(i)] for i in range(len(node))]
        return node

    return listify(tree)


def init_params(cfg: Config, key: jax.Array, pooler: bool = True) -> dict:
    """Random init as HF `BertPreTrainedModel._init_weights`: weights N(0, initializer_range), biases 0,
    LayerNorm weight 1 / bias 0, and the padding_idx row of the word embeddings zeroed."""
    shapes = param_shapes(cfg, pooler)
    keys = jax.random.split(key, len(shapes))
    flat = {}
    for k, (name, shape) in zip(keys, shapes.items()):
        if "LayerNorm" in name:
            flat[name] = jnp.ones(shape) if name.endswith("weight") else jnp.zeros(shape)
        elif name.endswith("bias"):
            flat[name] = jnp.zeros(shape)
        else:
            flat[name] = cfg.initializer_range * jax.random.normal(k, shape, jnp.float32)
    word = "embeddings.word_embeddings.weight"
    flat[word] = flat[word].at[cfg.pad_token_id].set(0.0)
    return unflatten(flat)


# ----------------------------------------------------------------------------------------------------------------
# Reading.


def canonical_name(name: str) -> str:
    """HF key of a tensor name from any BERT checkpoint flavour: strip `bert.`, rename gamma/beta."""
    name = name.removeprefix("bert.")
    *path, leaf = name.split(".")
    if path and "LayerNorm" in path[-1] and leaf in LEGACY_NAMES:
        leaf = LEGACY_NAMES[leaf]
    return ".".join([*path, leaf])


def weight_files(folder: pathlib.Path) -> list[pathlib.Path]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():  # a sharded checkpoint: the index maps each tensor to its shard
        shards = sorted(set(read_json(index, dict).get("weight_map", {}).values()))
        return [folder / s for s in shards]
    if (folder / "pytorch_model.bin").exists():
        raise ValueError(f"{folder}: has pytorch_model.bin but no model.safetensors; minilm reads safetensors only "
                         "(a .bin file is a pickle, which can run code when loaded). Convert it once with "
                         "transformers: AutoModel.from_pretrained(DIR).save_pretrained(DIR, safe_serialization=True)")
    raise FileNotFoundError(f"{folder}: no model.safetensors")


def load_params(folder, cfg: Config) -> dict:
    """Read the BertModel tensors of a folder's safetensors file(s), check each one against the config."""
    folder = pathlib.Path(folder)
    tensors, source = {}, {}
    for file in weight_files(folder):
        try:
            with safetensors.safe_open(str(file), framework="np") as f:
                names = list(f.keys())
                # Files saved from head models (BertForMaskedLM, ...) prefix the encoder with `bert.` and add
                # cls.* / classifier.* heads; keep the encoder and ignore the heads.
                if any(n.startswith("bert.") for n in names):
                    names = [n for n in names if n.startswith("bert.")]
                for name in names:
                    key = canonical_name(name)
                    if key in SKIPPED:
                        continue
                    tensors[key], source[key] = f.get_tensor(name), name
        except (safetensors.SafetensorError, OSError, TypeError) as e:
            raise ValueError(f"{file}: cannot read safetensors ({e})") from None

    expected = param_shapes(cfg)
    pooler = [k for k in expected if k.startswith("pooler.")]
    if not any(k in tensors for k in pooler):  # BertModel(add_pooling_layer=False) / MLM files have no pooler
        expected = {k: s for k, s in expected.items() if k not in pooler}
    missing = [k for k in expected if k not in tensors]
    unexpected = [source[k] for k in tensors if k not in expected]
    if missing:
        raise ValueError(f"{folder}: tensors missing for config.json (num_hidden_layers="
                         f"{cfg.num_hidden_layers}): {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
    if unexpected:
        raise ValueError(f"{folder}: tensors not part of a BertModel with this config.json: "
                         f"{', '.join(unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}")
    for key, shape in expected.items():
        x = tensors[key]
        if tuple(x.shape) != shape:
            raise ValueError(f"{folder}: tensor {source[key]!r} has shape {tuple(x.shape)}, expected {shape} from "
                             f"config.json (hidden_size={cfg.hidden_size}, intermediate_size="
                             f"{cfg.intermediate_size}, vocab_size={cfg.vocab_size})")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"{folder}: tensor {source[key]!r} has dtype {x.dtype}, expected a float type")
        tensors[key] = x.astype(np.float32)  # float16 checkpoints are computed in float32 here
    return unflatten({k: tensors[k] for k in expected})


def latest(folder: pathlib.Path) -> pathlib.Path:
    """A run's --out folder -> its newest checkpoint, the step-N folder its `latest` file names; else the folder."""
    return folder / (folder / "latest").read_text().strip() if (folder / "latest").is_file() else folder


def keep_layers(params: dict, cfg: Config, layers: tuple[int, ...]) -> tuple[dict, Config]:
    """A smaller student made by keeping some layers of a model (e.g. (0, 2, 4) of six), renumbered from 0:
    how nreimers/MiniLM-L6-H384-uncased was cut from the 12-layer MiniLM (docs/distillation.md)."""
    if not layers or any(not 0 <= i < cfg.num_hidden_layers for i in layers):
        raise ValueError(f"layers {layers} must be indices in 0..{cfg.num_hidden_layers - 1}")
    kept = [params["encoder"]["layer"][i] for i in layers]
    return {**params, "encoder": {**params["encoder"], "layer": kept}}, \
        dataclasses.replace(cfg, num_hidden_layers=len(layers))


# ----------------------------------------------------------------------------------------------------------------
# Writing.


def save_params(params: dict, file) -> None:
    flat = {k: np.ascontiguousarray(np.asarray(jax.device_get(v), dtype=np.float32))
            for k, v in flatten(params).items()}
    safetensors.numpy.save_file(flat, str(file), metadata={"format": "pt"})  # "pt": as the Hub file; HF checks it
