"""The HFC7xx finding codes of ``convert``: registered here, raised by the modules beside it."""

from __future__ import annotations

from ..findings import register

register("HFC701", "error", "conversion mismatch",
         "An output tensor's bytes (or header entry) differ from the source tensor (or its cast): "
         "the converted folder would load different weights. Nothing was written to DST.",
         "Re-run the conversion; if it persists, check the disk and memory of the machine, and "
         "report the tensor named.",
         "model.layers.0.mlp.up_proj.weight: output bytes differ from the source "
         "(pytorch_model-00001-of-00002.bin)")


register("HFC702", "info", "tied alias dropped",
         "safetensors cannot store two names for one storage. config.json says "
         "tie_word_embeddings, so lm_head.weight is left out and transformers re-ties it to the "
         "embedding on load, as save_pretrained does.",
         "Nothing to do; the alias map is recorded in each shard's __metadata__.",
         "lm_head.weight shares its storage with model.embed_tokens.weight and "
         "tie_word_embeddings is true: dropped (transformers re-ties it on load)")


register("HFC703", "info", "shared storage copied",
         "Several tensors of the .bin share one storage and nothing says the model re-ties them, "
         "so each is written as its own copy: nothing is lost, the output is a little larger.",
         "Nothing to do. If the model ties these weights, set tie_word_embeddings in config.json "
         "and convert again to drop the copy.",
         "lm_head.weight shares its storage with model.embed_tokens.weight: written as its own copy")


register("HFC704", "error", "input refused",
         "A weight file the loader would read is broken, hostile or missing, so the conversion "
         "would lose tensors or execute code. hfconv converts nothing and creates no DST.",
         "Fix or re-download the file named (see the finding quoted); never torch.load a file "
         "refused with HFC201.",
         "refused: pytorch_model.bin: pickle references forbidden global 'os.system' (HFC201)")


register("HFC705", "error", "not enough disk space",
         "The output needs more space than the file system holding DST has free; hfconv checks "
         "before writing rather than failing half-way.",
         "Free space, or choose a DST on another disk.",
         "DST needs 1.9 GB but only 1.2 GB is free on /data")


register("HFC706", "error", "output fails validation",
         "The converted folder has validation errors the source did not have; it was not "
         "renamed into place (DST was not created).",
         "Report it: this is a bug in hfconv. The finding quoted says what is wrong.",
         "output fails validation: HFC302 model-00001-of-00002.safetensors holds 'x', which the "
         "index does not list")


register("HFC707", "warning", "file not copied",
         "A non-weight file of SRC was not copied: a symlink pointing outside the folder (copying "
         "it would publish a file the model never shipped), a special file, or an unsafe name.",
         "Copy the file by hand if it belongs to the model.",
         "notes.txt is a symlink pointing outside the model folder: not copied")


register("HFC708", "info", "training file skipped",
         "Files a training run leaves behind (optimizer state, trainer state, RNG state, "
         "training_args.bin) are not part of the model; they are pickles and are not copied.",
         "Nothing to do.",
         "training_args.bin is a training leftover: not copied")


register("HFC709", "info", "dtype cast",
         "Floating tensors were cast to the requested dtype (integer, bool and float8 tensors "
         "are kept as they are) and config.json's torch_dtype was updated.",
         "Nothing to do.",
         "291 tensors cast to bfloat16; config.json torch_dtype set to bfloat16")


register("HFC710", "warning", "config dtype not updated",
         "The tensors were cast but config.json could not be parsed (or is missing), so its "
         "torch_dtype still names the old dtype.",
         "Fix config.json and set torch_dtype by hand.",
         "config.json is not valid JSON: torch_dtype not updated to float16")


register("HFC711", "info", "stale weights skipped",
         "Weight files no loader reads (the other format beside the loaded one, shards the index "
         "does not reference) are not converted and not copied.",
         "Nothing to do; they were dead weight.",
         "pytorch_model.bin is not loaded (model.safetensors is): not converted or copied")


register("HFC712", "warning", "index regenerated",
         "The source index disagreed with its shards (tensors missing, unlisted or in the wrong "
         "shard); the new index is built from the tensors the shards really hold.",
         "Check that no tensor is missing from the output (see the source findings quoted).",
         "source index disagrees with the shards (HFC301); the new index lists what the shards hold")


register("HFC713", "error", "output would be invalid",
         "The converted folder fails validation with errors the source already has (a tensor "
         "missing from a shard, a state dict saved with DDP's 'module.' prefix, a config.json that "
         "is not JSON, ...). A converted folder that does not load is not a successful conversion, "
         "so DST was not created. What convert repairs (an index regenerated from the shards) is "
         "not an error of the output.",
         "Fix the source as the findings listed say, then convert again. To salvage the tensors "
         "anyway, pass --allow-invalid-output: DST is then written, and the report and exit code "
         "(1) still say the output is invalid.",
         "the output would fail validation with 1 error already in the source (HFC602 "
         "model.layers.1.post_attention_layernorm.weight [16] is missing from the weights)")


register("HFC714", "error", "write failed",
         "Writing DST failed part-way: the disk filled up (ENOSPC), a quota or a file size limit was "
         "hit (EDQUOT, EFBIG), the device reported an I/O error (EIO), or the folder DST goes into "
         "is not writable. The temporary folder was removed; DST was not created.",
         "Free space (the report of a completed run gives the size), raise the quota or limit, or "
         "choose a DST on another disk; then convert again.",
         "no space left on device writing model-00002-of-00004.safetensors")


register("HFC715", "error", "source changed during conversion",
         "A file convert was about to read from SRC is no longer the regular file inside SRC that "
         "was planned: it became a symlink (possibly to a file outside the folder), a FIFO or a "
         "folder, or was removed. Every file is opened once, without following a symlink out of "
         "SRC, and checked on the opened descriptor, so nothing outside SRC is ever copied.",
         "Make sure nothing modifies SRC while converting (another process, a sync client), then "
         "convert again.",
         "note.txt changed during the conversion: 'note.txt' became a symlink or changed type while "
         "being read; refused")


register("HFC716", "error", "invalid output written",
         "--allow-invalid-output: DST was written although it fails validation (the errors are "
         "listed). It is a salvage copy, not a model that loads; the exit code is 1.",
         "Fix the errors listed in DST (or in SRC and convert again) before using or uploading it.",
         "output INVALID: /data/out fails validation with 2 errors (written anyway: "
         "--allow-invalid-output)")
