"""`ricl compare`: its config, inputs and indexes, plan -> score -> assemble, on Ray too."""
