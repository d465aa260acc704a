//! Streaming RPCs: Exec, Attach and PortForward hand out URLs of the streaming server.

use k8s_cri::v1::*;
use tonic::Status;

use crate::node::Node;
use crate::not_implemented;

/// Handles `Exec`.
pub async fn exec(_node: &Node, _req: ExecRequest) -> Result<ExecResponse, Status> {
    Err(not_implemented("Exec"))
}

/// Handles `Attach`.
pub async fn attach(_node: &Node, _req: AttachRequest) -> Result<AttachResponse, Status> {
    Err(not_implemented("Attach"))
}

/// Handles `PortForward`.
pub async fn port_forward(
    _node: &Node,
    _req: PortForwardRequest,
) -> Result<PortForwardResponse, Status> {
    Err(not_implemented("PortForward"))
}
