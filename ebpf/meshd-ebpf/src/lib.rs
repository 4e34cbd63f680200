//! Empty library target: lets the agent declare a build-dependency on this package so that
//! cargo rebuilds the agent when the programs change. The programs are the `meshd` binary.
#![no_std]
