//! What the plan (and later the dataplane) concludes about each object.

/// Reasons used for the Ready condition and as the `reason` metric label.
pub mod reason {
    pub const READY: &str = "Ready";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const NETWORK_NOT_FOUND: &str = "NetworkNotFound";
    pub const NETWORK_NOT_READY: &str = "NetworkNotReady";
    pub const SUBNET_OVERLAP: &str = "SubnetOverlap";
    pub const BRIDGE_NAME_CONFLICT: &str = "BridgeNameConflict";
    pub const ADDRESS_IN_USE: &str = "AddressInUse";
    pub const POOL_EXHAUSTED: &str = "PoolExhausted";
    pub const DUPLICATE_MAC: &str = "DuplicateMAC";
    pub const INTERFACE_CONFLICT: &str = "InterfaceConflict";
    pub const SANDBOX_NOT_FOUND: &str = "SandboxNotFound";
    pub const SANDBOX_OWNER_GONE: &str = "SandboxOwnerGone";
    pub const ATTACHMENT_NOT_FOUND: &str = "AttachmentNotFound";
    pub const ATTACHMENT_NOT_READY: &str = "AttachmentNotReady";
    pub const NOT_APPLICABLE: &str = "NotApplicable";
    pub const PORT_CONFLICT: &str = "PortConflict";
    pub const PORT_IN_USE: &str = "PortInUse";
    pub const PORTS_EXHAUSTED: &str = "PortsExhausted";
    pub const UNSUPPORTED: &str = "Unsupported";
    pub const KERNEL_ERROR: &str = "KernelError";
    pub const NOT_A_PEER: &str = "NotAPeer";
    pub const ADDRESS_BLOCK_PENDING: &str = "AddressBlockPending";
    pub const POD_NOT_FOUND: &str = "PodNotFound";
    pub const POD_NOT_STARTED: &str = "PodNotStarted";
    /// Outside the tenant boundary (see `plan::tenancy`).
    pub const FORBIDDEN: &str = "Forbidden";

    /// Reasons that pass by themselves in the normal course (a pod's
    /// sandbox about to be made, a block being claimed, a mapping waiting
    /// on its attachment, which has a condition of its own): not worth a
    /// Warning Event.
    pub fn is_pending(reason: &str) -> bool {
        [POD_NOT_STARTED, ADDRESS_BLOCK_PENDING, ATTACHMENT_NOT_READY].contains(&reason)
    }
}

/// Why an object is not Ready: a reason from [`reason`] and a message a
/// user can act on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Failure {
    pub reason: &'static str,
    pub message: String,
}

impl Failure {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Failure { reason, message: message.into() }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(reason::INVALID_SPEC, message)
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.message)
    }
}
