package fedhistory_test

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

// TestCoreImportsNoObservabilityStack: a homeserver that imports
// fedhistory (and sign, and the stores) compiles in neither client_golang
// nor OpenTelemetry; only the adapter packages, prom and otel, bring them.
func TestCoreImportsNoObservabilityStack(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	core := []string{
		"github.com/fedhistory/fedhistory",
		"github.com/fedhistory/fedhistory/sign",
		"github.com/fedhistory/fedhistory/memstore",
		"github.com/fedhistory/fedhistory/sqlstore",
		"github.com/fedhistory/fedhistory/dag",
	}
	out, err := exec.Command(goTool, append([]string{"list", "-deps"}, core...)...).Output()
	if err != nil {
		var stderr string
		if exit, ok := err.(*exec.ExitError); ok {
			stderr = string(exit.Stderr)
		}
		t.Fatalf("go list -deps: %v\n%s", err, stderr)
	}
	deps := strings.Fields(string(out))
	if len(deps) < len(core) {
		t.Fatalf("go list -deps listed %d packages: %q", len(deps), out)
	}
	for _, dep := range deps {
		if strings.Contains(dep, "prometheus") || strings.Contains(dep, "opentelemetry") {
			t.Errorf("the core packages depend on %s", dep)
		}
	}
	// The check itself works: the adapters do depend on their stacks.
	for adapter, dep := range map[string]string{
		"github.com/fedhistory/fedhistory/prom": "github.com/prometheus/client_golang/prometheus",
		"github.com/fedhistory/fedhistory/otel": "go.opentelemetry.io/otel/trace",
	} {
		out, err := exec.Command(goTool, "list", "-deps", adapter).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", adapter, err)
		}
		if !slices.Contains(strings.Fields(string(out)), dep) {
			t.Errorf("go list -deps %s does not list %s", adapter, dep)
		}
	}
}

// TestModuleRequiresNoTestClients: the load test's vegeta and the interop
// tests' mautrix-go live in the interop module, so a homeserver that
// requires fedhistory never downloads or builds them. GOWORK=off makes
// "go list -m all" report this module's own graph, as a user's build sees
// it, rather than the workspace's union with interop.
func TestModuleRequiresNoTestClients(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("the go command is not on PATH")
	}
	list := exec.Command(goTool, "list", "-m", "all")
	list.Env = append(os.Environ(), "GOWORK=off")
	out, err := list.Output()
	if err != nil {
		var stderr string
		if exit, ok := err.(*exec.ExitError); ok {
			stderr = string(exit.Stderr)
		}
		t.Fatalf("go list -m all: %v\n%s", err, stderr)
	}
	modules := strings.Split(strings.TrimSpace(string(out)), "\n")
	if !slices.ContainsFunc(modules, func(line string) bool { return strings.HasPrefix(line, "github.com/stretchr/testify ") }) {
		t.Fatalf("go list -m all does not list testify, which the tests use: %q", out)
	}
	for _, module := range modules {
		for _, forbidden := range []string{"github.com/tsenart/vegeta", "maunium.net/go/mautrix", "go.mau.fi/"} {
			if strings.HasPrefix(module, forbidden) {
				t.Errorf("the root module's graph holds %s; it belongs in interop/go.mod", module)
			}
		}
	}
}
