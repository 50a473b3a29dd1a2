// Package bpf holds nsflow's eBPF datapath: the tc programs that count
// traffic per port and per flow (nsflow.c), their bpf2go-generated bindings
// and objects (committed, so building needs no clang), and a small API to
// load them once and attach them to interfaces in any network namespace.
package bpf

// Regenerate with `make generate`, or `BPF_CLANG=clang-19 go generate` here
// (go generate has no default-value syntax, so BPF_CLANG must be set). The
// include paths cover the multiarch asm/ headers of Debian hosts; clang
// ignores the one that does not exist. -mcpu=v3 (Linux 5.1+; tcx needs
// 6.6) for 32-bit atomics and jumps.
//go:generate go tool bpf2go -cc=$BPF_CLANG -cflags "-O2 -mcpu=v3 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I/usr/include/aarch64-linux-gnu" -target bpfel -type counter -type port_key -type port_stats -type port_line -type port_slot -type flow_key -type flow_value -type flow_cache_entry -type loss nsflow nsflow.c
