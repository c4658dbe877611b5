//! The system prompt of an attempt.
use nightshift_core::{AgentSpec, SessionScope};

/// Instruction plus what the loop must know about its context: the recalled memory, or that
/// there is none.
pub(super) fn system_prompt(spec: &AgentSpec, has_memory: bool, recalled: &str) -> String {
    let mut s = spec.system_instruction.clone();
    if !recalled.is_empty() {
        s.push_str("\n\n");
        s.push_str(recalled);
    } else if !has_memory && spec.memory.session != SessionScope::Run {
        // A worker without a memory service: say so rather than let the model pretend to remember.
        s.push_str("\n\nYou have no memory of earlier runs in this session.");
    }
    s
}
