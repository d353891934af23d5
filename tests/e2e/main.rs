//! End-to-end tests: real `srun`/`sbatch` on the virtual cluster (`scripts/vcluster`), a real
//! Docker engine per node, jobs submitted as the test user alice. The cluster is brought up
//! (or repaired) once; if that fails every test fails: nothing is skipped.

mod admin;
mod cluster;
mod direct;
mod doctor;
mod fabric;
mod gpus;
mod hardening;
mod hostile;
mod hosts;
mod images;
mod launcher;
mod mpi;
mod pyxis;
mod teardown;
mod tools;
mod tree;
mod users;
