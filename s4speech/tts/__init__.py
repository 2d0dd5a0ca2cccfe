"""Text-to-speech with an S4 decoder (``tts: ssm``), its recipe, synthesis and evaluation."""
