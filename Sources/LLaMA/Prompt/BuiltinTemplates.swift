// The four prompt templates of tloen/alpaca-lora (templates/*.json), compiled in so that `lora`
// works from any directory. Each string is the file's bytes exactly, including the four spaces
// after "response_split" in the alpaca files and the final newline; `configs/templates/*.json`
// holds the same bytes, and PrompterTests checks that the two never drift. Edit neither by hand
// (an editor that trims trailing whitespace would change them): copy the upstream file instead.
//
// The literals are raw (#"""...."""#), so `\n` below is the two characters a JSON file holds.

enum BuiltinTemplates {
    /// Names accepted by `Prompter(named:)`, in alpaca-lora's order of importance.
    static let names = ["alpaca", "alpaca_short", "alpaca_legacy", "vigogne"]

    /// The JSON text of the built-in template `name`, or nil.
    static func json(named name: String) -> String? {
        switch name {
        case "alpaca": return alpaca
        case "alpaca_short": return alpacaShort
        case "alpaca_legacy": return alpacaLegacy
        case "vigogne": return vigogne
        default: return nil
        }
    }

    static let alpaca = #"""
{
    "description": "Template used by Alpaca-LoRA.",
    "prompt_input": "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "prompt_no_input": "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n",
    "response_split": "### Response:"    
}

"""#

    static let alpacaShort = #"""
{
    "description": "A shorter template to experiment with.",
    "prompt_input": "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    "prompt_no_input": "### Instruction:\n{instruction}\n\n### Response:\n",
    "response_split": "### Response:"    
}

"""#

    static let alpacaLegacy = #"""
{
    "description": "Legacy template, used by Original Alpaca repository.",
    "prompt_input": "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:",
    "prompt_no_input": "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:",
    "response_split": "### Response:"    
}

"""#

    static let vigogne = #"""
{
    "description": "French template, used by Vigogne for finetuning.",
    "prompt_input": "Ci-dessous se trouve une instruction qui décrit une tâche, associée à une entrée qui fournit un contexte supplémentaire. Écrivez une réponse qui complète correctement la demande.\n\n### Instruction:\n{instruction}\n\n### Entrée:\n{input}\n\n### Réponse:\n",
    "prompt_no_input": "Ci-dessous se trouve une instruction qui décrit une tâche. Écrivez une réponse qui complète correctement la demande.\n\n### Instruction:\n{instruction}\n\n### Réponse:\n",
    "response_split": "### Réponse:"
}

"""#
}
