import LLaMA
print("lora")
