"""The finding codes of ``diff`` (HFC960-HFC969): what kept a comparison from being made."""

from __future__ import annotations

from ..findings import register

register("HFC960", "error", "weights not comparable",
         "A weight file of one of the two folders could not be read (broken, refused as hostile, missing "
         "from its index, or not a regular file), or reading a tensor's bytes failed while comparing (an I/O "
         "error, a file that shrank or changed since its header was read), so those tensors were not "
         "compared: the weights cannot be shown identical.",
         "Run hfconv validate on that folder and fix what it reports (check the disk, re-download the file), "
         "then compare again.",
         "B: model-00002-of-00002.safetensors could not be read (HFC101: header length 9999999999 is "
         "larger than the file); its tensors were not compared")
register("HFC962", "warning", "metadata unreadable",
         "A metadata file (config.json, tokenizer.json, ...) of one folder is not valid JSON, so its keys "
         "were not compared.",
         "Run hfconv validate on that folder and fix the file.",
         "B: config.json is not valid JSON: Expecting ',' delimiter at line 12 column 3; not compared")
