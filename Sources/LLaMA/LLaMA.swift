public enum LLaMAModule {}
