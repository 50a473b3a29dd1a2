package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"regexp"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/nsflow/nsflow/agent"
	"github.com/nsflow/nsflow/bpf"
	"github.com/nsflow/nsflow/collector"
	"github.com/nsflow/nsflow/discovery"
	"github.com/nsflow/nsflow/topology"
	"github.com/nsflow/nsflow/verify"
	"github.com/prometheus/common/promslog"
	"github.com/spf13/cobra"
)

func init() { subcommands = append(subcommands, newAgentCmd) }

// agentMemoryLimit is the Go runtime's soft memory limit for the agent
// unless GOMEMLIMIT says otherwise.
const agentMemoryLimit = 40 << 20

type agentFlags struct {
	web                            agent.WebConfig
	logLevel, logFormat            string
	pin                            bool
	pinPath, stateFile, attachMode string
	maxFlows                       uint32
	idle, interval, goneRetention  time.Duration
	topFlows, topPorts             int
	nsInclude, nsExclude           string
	ifInclude, ifExclude           string
	topology                       string
}

func newAgentCmd() *cobra.Command {
	var f agentFlags
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run the host agent: attach to every veth and bridge port, export per-namespace traffic to Prometheus",
		Long: `The agent discovers network namespaces (named ones under /run/netns and
unnamed ones held by processes), attaches the nsflow tc programs to their veth
and bridge ports as they come and go, and serves per-port and per-namespace-pair
counters at --web.telemetry-path. It needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN
and CAP_SYS_ADMIN, and CAP_SYS_PTRACE to find the namespaces of other users'
processes; SIGTERM or SIGINT detaches everything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return runAgent(cmd.Context(), f) },
	}
	fl := cmd.Flags()
	fl.StringVar(&f.web.ListenAddress, "web.listen-address", ":9995", "address to serve metrics on")
	fl.StringVar(&f.web.TelemetryPath, "web.telemetry-path", "/metrics", "path of the metrics")
	fl.StringVar(&f.web.ConfigFile, "web.config.file", "", "exporter-toolkit web config file (TLS, basic auth)")
	fl.StringVar(&f.logLevel, "log.level", "info", "log level: debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log.format", "logfmt", "log format: logfmt or json")
	fl.BoolVar(&f.pin, "bpf.pin", true, "pin the counter maps so counters survive agent restarts")
	fl.StringVar(&f.pinPath, "bpf.pin-path", bpf.DefaultPinPath, "bpffs directory for the pinned maps")
	fl.StringVar(&f.stateFile, "state.file", agent.DefaultStateFile, "file keeping the totals of evicted flows, port slots and live flows' attribution across restarts (with --bpf.pin; the attributions go to FILE.decisions)")
	fl.StringVar(&f.attachMode, "bpf.attach-mode", "auto", "attach mode: auto (tcx, else tc), tcx or tc")
	fl.Uint32Var(&f.maxFlows, "flows.max", bpf.DefaultMaxFlows, "size of the kernel flow table")
	fl.DurationVar(&f.idle, "flows.idle-timeout", agent.DefaultFlowIdleTimeout, "evict flows idle this long (their counts stay in the totals)")
	fl.DurationVar(&f.interval, "discovery.interval", discovery.DefaultInterval, "how often /proc is scanned for unnamed namespaces")
	fl.IntVar(&f.topFlows, "collector.top-flows", agent.DefaultTopFlows, "series of nsflow_top_flow_bytes_total at most")
	fl.IntVar(&f.topPorts, "collector.top-ports", agent.DefaultTopPorts, "destination ports per namespace pair with their own series; the rest are port=\"other\"")
	fl.StringVar(&f.nsInclude, "netns.include", "", "only namespaces whose label matches this regexp (host, a name, netns-INODE, or the path of a namespace named like one of these)")
	fl.StringVar(&f.nsExclude, "netns.exclude", "", "skip namespaces whose label matches this regexp")
	fl.DurationVar(&f.goneRetention, "netns.gone-retention", agent.DefaultGoneRetention, "keep the series of a removed namespace this long (pair totals, ports, violations); 0 keeps them for ever")
	fl.StringVar(&f.ifInclude, "interface.include", "", "only interfaces whose name matches this regexp")
	fl.StringVar(&f.ifExclude, "interface.exclude", "", "skip interfaces whose name matches this regexp")
	fl.StringVar(&f.topology, "topology", "", "topology file: count traffic its wiring cannot deliver as nsflow_isolation_violation_packets_total")
	return cmd
}

// maxFlowsLimit bounds --flows.max well below what the kernel refuses
// (a hash map of more than about 2^28 entries): 16M records take some
// GiB of kernel memory already.
const maxFlowsLimit = 1 << 24

func runAgent(ctx context.Context, f agentFlags) error {
	level, format := promslog.NewLevel(), promslog.NewFormat()
	if err := level.Set(f.logLevel); err != nil {
		return usage(fmt.Errorf("--log.level: %w", err))
	}
	if err := format.Set(f.logFormat); err != nil {
		return usage(fmt.Errorf("--log.format: %w", err))
	}
	logger := promslog.New(&promslog.Config{Level: level, Format: format, Writer: os.Stderr})
	if os.Getenv("GOMEMLIMIT") == "" {
		// A soft limit keeps the heap (and so RSS) near what the agent
		// needs after the burst of a thousand attaches at start.
		debug.SetMemoryLimit(agentMemoryLimit)
	}

	cfg := agent.Config{Logger: logger, StateFile: f.stateFile, MaxFlows: f.maxFlows,
		FlowIdleTimeout: f.idle, TopFlows: f.topFlows, TopPorts: f.topPorts, GoneRetention: f.goneRetention,
		Discovery: discovery.WatchConfig{Interval: f.interval}}
	if f.pin {
		cfg.PinPath = f.pinPath
	}
	// The agent's zero values are its defaults; on the command line a zero
	// is a mistake.
	switch {
	case f.maxFlows > maxFlowsLimit:
		return usage(fmt.Errorf("--flows.max: %d is more than %d", f.maxFlows, maxFlowsLimit))
	case f.maxFlows == 0:
		return usage(errors.New("--flows.max: 0 is no flow table (the default is " + strconv.Itoa(bpf.DefaultMaxFlows) + ")"))
	case f.idle < time.Second:
		return usage(fmt.Errorf("--flows.idle-timeout: %v is shorter than 1s", f.idle))
	}
	switch {
	case f.goneRetention < 0:
		return usage(fmt.Errorf("--netns.gone-retention: %v is negative (0 keeps the series for ever)", f.goneRetention))
	case f.goneRetention == 0:
		cfg.GoneRetention = -1 // the agent's zero is its default
	}
	switch f.attachMode {
	case "auto":
	case "tcx", "tc":
		cfg.AttachMode = bpf.AttachMode(f.attachMode)
	default:
		return usage(fmt.Errorf("--bpf.attach-mode: unknown mode %q (want auto, tcx or tc)", f.attachMode))
	}
	var err error
	for _, r := range []struct {
		flag, expr string
		dst        **regexp.Regexp
	}{
		{"--netns.include", f.nsInclude, &cfg.Netns.Include},
		{"--netns.exclude", f.nsExclude, &cfg.Netns.Exclude},
		{"--interface.include", f.ifInclude, &cfg.Interface.Include},
		{"--interface.exclude", f.ifExclude, &cfg.Interface.Exclude},
	} {
		if r.expr == "" {
			continue
		}
		if *r.dst, err = regexp.Compile(r.expr); err != nil {
			return usage(fmt.Errorf("%s: %w", r.flag, err))
		}
	}
	for _, n := range []struct {
		flag string
		v    *int
	}{{"--collector.top-flows", &cfg.TopFlows}, {"--collector.top-ports", &cfg.TopPorts}} {
		switch {
		case *n.v < 0:
			return usage(fmt.Errorf("%s %d: must not be negative", n.flag, *n.v))
		case *n.v == 0:
			*n.v = -1 // none; the agent reads 0 as its default
		}
	}
	if f.interval <= 0 {
		return usage(fmt.Errorf("--discovery.interval %v: must be positive", f.interval))
	}
	// Empty, each would mean something else than asked: no pinning, the
	// default state file, a random port on every address.
	for _, e := range []struct{ flag, v string }{
		{"--bpf.pin-path", f.pinPath}, {"--state.file", f.stateFile}, {"--web.listen-address", f.web.ListenAddress},
	} {
		if e.v == "" {
			if e.flag == "--bpf.pin-path" {
				return usage(errors.New("--bpf.pin-path: must not be empty (--bpf.pin=false turns pinning off)"))
			}
			return usage(fmt.Errorf("%s: must not be empty", e.flag))
		}
	}
	if err := agent.ValidateTelemetryPath(f.web.TelemetryPath); err != nil {
		return usage(err)
	}
	if err := agent.ValidateWebConfig(f.web); err != nil {
		return err
	}
	if f.topology != "" {
		spec, err := topology.Load(f.topology)
		if err != nil {
			return usage(fmt.Errorf("--topology: %w", err))
		}
		cfg.Isolation = verify.NewModel(spec).Classifier()
	}

	l, err := net.Listen("tcp", f.web.ListenAddress)
	if err != nil {
		return fmt.Errorf("--web.listen-address: %w", err)
	}
	defer l.Close()
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	reg := collector.NewRegistry(logger, a, a.CollectorOptions())
	h, err := agent.Handler(logger, reg, f.web, a.Ready)
	if err != nil {
		return err
	}
	logger.Info("serving", "address", l.Addr().String(), "path", f.web.TelemetryPath, "pin_path", cfg.PinPath)

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	// After the first signal the agent detaches everything; a second one
	// kills it, in case detaching thousands of tcx links takes too long.
	go func() { <-ctx.Done(); stop() }()
	// A server that fails ends the agent too, so a supervisor restarts it
	// rather than leave it attached with no /metrics.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	srvErr := make(chan error, 1)
	go func() {
		err := agent.Serve(ctx, logger, l, h, f.web)
		if err != nil {
			cancel()
		}
		srvErr <- err
	}()
	runErr := a.Run(ctx)
	stop()
	if err := <-srvErr; err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}
