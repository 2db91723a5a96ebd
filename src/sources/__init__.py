"""Model sources: the offline default, file checks and tokenizer loading, used by `data` and `models` alike."""
