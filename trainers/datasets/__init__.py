"""IL, IWM and SR dataset builders: chat-format prompt/completion rows with lineage."""
