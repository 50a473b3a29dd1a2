package main

import (
	"encoding/json"
	"fmt"

	"github.com/nsflow/nsflow/internal/version"
	"github.com/spf13/cobra"
)

func init() { subcommands = append(subcommands, newVersionCmd) }

func newVersionCmd() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the nsflow version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := version.Get()
			switch output {
			case "text":
				fmt.Fprintf(cmd.OutOrStdout(), "nsflow %s (revision %s, %s, %s)\n",
					v.Version, v.Revision, v.GoVersion, v.Platform)
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			default:
				return usage(fmt.Errorf("--output: unknown format %q (want text or json)", output))
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}
