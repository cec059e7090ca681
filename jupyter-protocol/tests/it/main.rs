//! Integration tests of jupyter-protocol: real ipykernels, in-process ZeroMQ peers, and property
//! tests of the codecs.
mod heartbeat;
mod ipykernel;
mod proptests;
mod sockets;
mod support;
