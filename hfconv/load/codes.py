"""load-test's finding codes, HFC730..HFC746: registered here, raised by the steps of
:func:`hfconv.load.load_test` (HFC731..733 by the planner, :mod:`hfconv.load.device_map`)."""

from __future__ import annotations

from ..findings import register

__all__: list[str] = []

# --- HFC73x..76x: loading --------------------------------------------------------------------
register("HFC730", "error", "load refused",
         "The folder has validation errors (a hostile pickle, a broken header, shapes the config "
         "contradicts, ...): load-test refuses to hand it to torch. The validation findings are listed "
         "with it.",
         "Fix the errors `hfconv validate` reports, then run load-test again.",
         "refused to load: validation found 1 error (HFC201 pytorch_model.bin: pickle references "
         "forbidden global 'os.system')")
register("HFC731", "error", "tensor not assigned",
         "The device map gives no device to some tensors (no key is a prefix of their name): "
         "from_pretrained fails with '... doesn't have any device set'.",
         "Add the tensor's module to the map, or a \"\" entry for everything not listed.",
         "the device map assigns no device to 1 tensor: lm_head.weight; add their module (or \"\" for "
         "the rest)")
register("HFC732", "error", "unknown device",
         "The device map or --max-memory names a device this machine does not have (cuda:3 on a "
         "2-GPU machine, a GPU without CUDA): the load would fail, or silently run elsewhere.",
         "Use the devices the machine has (load-test lists them), or run on the serving machine.",
         "the device map puts 'model.layers.20' on cuda:3, which this machine does not have (devices: "
         "cuda:0, cuda:1, cpu, disk)")
register("HFC733", "error", "exceeds memory",
         "The tensors do not fit the devices under their limits: a device map over a device's "
         "limit, a block larger than every device, or a model larger than all devices together. "
         "Serving would run out of memory.",
         "Raise --max-memory, allow offloading (--device-map auto with disk), use more devices, or "
         "load in a smaller --dtype.",
         "the device map puts 9.1 GB on cuda:0, over its limit of 8.0 GB")
register("HFC734", "error", "checksum mismatch",
         "The bytes of a tensor on its device differ from the bytes in the file: corruption between "
         "disk and device (bad RAM, a faulty transfer, a file changed while loading). The model would "
         "compute with wrong weights, silently.",
         "Run load-test again; if it persists, test the machine's memory and GPU, and re-download the "
         "shard named.",
         "model.layers.0.mlp.up_proj.weight: bytes on cuda:0 differ from the source "
         "(model-00001-of-00002.safetensors); checksum 3f2a... != 9c01...")
register("HFC735", "error", "tensor failed to load",
         "Reading a tensor or moving it onto its device failed (I/O error, short read, out of memory "
         "on the device, offload folder not writable).",
         "See the message: free device memory or lower --max-memory, fix the disk, or choose another "
         "--offload-folder.",
         "model.layers.31.mlp.down_proj.weight: could not be loaded onto cuda:1: CUDA out of memory")
register("HFC736", "error", "dtype or shape differs",
         "A tensor that arrived on its device does not have the dtype and shape its header declares "
         "(or the --dtype cast asks for).",
         "Report it with the tensor named: the header and the loaded bytes disagree.",
         "model.norm.weight: loaded as float16 [4096] but the header says F32 [4096]")
register("HFC737", "warning", "tied tensors split",
         "Tensors that share one storage (a tied lm_head and embedding) are put on different devices "
         "by the device map: transformers unties them (two copies) or warns.",
         "Put the modules holding them on the same device.",
         "lm_head.weight shares its storage with model.embed_tokens.weight but is placed on cuda:1, "
         "not cuda:0")
register("HFC738", "warning", "device map key unused",
         "A key of the device map matches no tensor of the folder: a typo, or a module without "
         "weights. The map may not place what its author intended.",
         "Check the key against the tensor names (hfconv inspect --tensors lists them).",
         "device map key 'model.layer.0' matches no tensor")
register("HFC739", "warning", "tensors left on meta",
         "The device map puts tensors on the meta device: they have no data and are not loaded; the "
         "model cannot run with them.",
         "Map them to a real device, unless the meta placement is deliberate.",
         "2 tensors are mapped to meta and were not loaded (e.g. lm_head.weight)")
register("HFC740", "info", "forward skipped",
         "--forward needs transformers (and accelerate), or a model transformers knows without the "
         "folder's own code; it was not run, the weights were still loaded and verified.",
         "pip install transformers accelerate, or drop --forward.",
         "--forward skipped: transformers is not installed (pip install transformers accelerate)")
register("HFC741", "error", "forward failed",
         "Building the model on the device map or running one forward pass raised an error: the folder "
         "loads tensor by tensor but not as a model.",
         "See the error quoted; it names the module or the shapes that do not fit.",
         "forward pass failed: RuntimeError: index 32000 is out of bounds for dimension 0 with size 200")
register("HFC742", "error", "non-finite logits",
         "The forward pass produced NaN or infinite logits on a few ordinary tokens: weights overflow "
         "in this dtype (float16), or are corrupt.",
         "Try --dtype bfloat16 or float32; check the weights (NaN or huge values) with the producer.",
         "forward pass: 1,204 of 3,200 logits are NaN or infinite (dtype float16)")

register("HFC743", "error", "nothing loaded",
         "load-test loaded no tensor at all: the device map puts every tensor on meta (or the folder "
         "holds none). A load test that loads nothing proves nothing, so it is not a pass.",
         "Map the modules to real devices (cpu, cuda:N, disk), e.g. --device-map auto.",
         "nothing was loaded: the device map puts all 21 tensors on meta")

register("HFC744", "warning", "validation errors that do not affect loading",
         "The folder has validation errors in files load-test does not read (a tokenizer file, "
         "generation_config.json, custom code): the weights, the index and config.json are sound, so "
         "the tensors were loaded anyway. `hfconv validate` still fails the folder.",
         "Fix the errors `hfconv validate` lists; --strict refuses to load any folder with errors, "
         "--ignore CODES drops codes you accept.",
         "loaded despite 1 validation error that does not affect loading (HFC405 generation_config.json: "
         "$.top_p must be a number between 0 and 1, not 1.5); --strict refuses them")
register("HFC745", "info", "balanced plan without GPUs",
         "--device-map balanced spreads the model over the GPUs; with none (or none allowed by "
         "--max-memory) the plan puts the whole model on the cpu, which says nothing about a GPU setup.",
         "Run on the machine with the GPUs, or use --device-map auto or sequential on purpose.",
         "balanced spreads the model over GPUs and this machine has none (or none allowed): the plan "
         "puts it on the cpu")
register("HFC746", "info", "library warning during --forward",
         "transformers or accelerate logged a warning while building the model or running the forward "
         "pass; load-test records it here instead of letting it interrupt the terminal.",
         "Usually nothing: e.g. accelerate says offloaded parameters sit on the meta device until used.",
         "accelerate: Some parameters are on the meta device because they were offloaded to the disk.")
