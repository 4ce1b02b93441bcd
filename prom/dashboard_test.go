package prom_test

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"

	"github.com/fedhistory/fedhistory/internal/obstest"
	"github.com/fedhistory/fedhistory/prom"
)

// dashboardPath is the Grafana dashboard shipped for the metrics.
const dashboardPath = "../contrib/grafana/fedhistory.json"

// queries returns every PromQL query of a Grafana dashboard: the panels'
// targets (rows' panels included) and the templating variables' queries.
func queries(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	require.NoError(t, err)
	var dashboard struct {
		Panels     []panel `json:"panels"`
		Templating struct {
			List []struct {
				Name       string `json:"name"`
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	require.NoError(t, json.Unmarshal(data, &dashboard))
	var out []string
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			if p.Type != "row" {
				require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
			}
			for _, target := range p.Targets {
				require.NotEmpty(t, target.Expr, "panel %q has an empty query", p.Title)
				out = append(out, target.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(dashboard.Panels)
	for _, v := range dashboard.Templating.List {
		if v.Definition != "" {
			out = append(out, v.Definition)
		}
	}
	return out
}

type panel struct {
	Type    string `json:"type"`
	Title   string `json:"title"`
	Targets []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

var (
	metricName = regexp.MustCompile(`\bfedhistory_[a-z0-9_]+\b`)
	byClause   = regexp.MustCompile(`\bby \(([^)]*)\)`)
)

// TestDashboardQueriesTheRegisteredMetrics: every metric the dashboard's
// queries name is one the adapter exports once a request of each kind was
// served, every label they group by is one of its labels, and every
// metric the adapter exports has a panel.
func TestDashboardQueriesTheRegisteredMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	metrics, err := prom.New(reg, prom.Options{})
	require.NoError(t, err)
	w := obstest.NewWorld(t, metrics.Trace())
	w.EachOutcome(t)
	w.SignedOutcomes(t, metrics.SignTrace())
	families, err := reg.Gather()
	require.NoError(t, err)
	byName := map[string]*dto.MetricFamily{}
	for _, f := range families {
		byName[f.GetName()] = f
	}

	// family resolves a name in a query to what exports it: a histogram's
	// _bucket, _sum and _count series are the histogram's.
	family := func(name string) *dto.MetricFamily {
		if f, ok := byName[name]; ok {
			return f
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if f, ok := byName[base]; ok && f.GetType() == dto.MetricType_HISTOGRAM {
					return f
				}
			}
		}
		return nil
	}
	labels := func(f *dto.MetricFamily) []string {
		var names []string
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				names = append(names, l.GetName())
			}
		}
		if f.GetType() == dto.MetricType_HISTOGRAM {
			names = append(names, "le")
		}
		// Prometheus adds these when it scrapes.
		return append(names, "instance", "job")
	}

	used := map[string]bool{}
	qs := queries(t, dashboardPath)
	require.NotEmpty(t, qs)
	for _, q := range qs {
		names := metricName.FindAllString(q, -1)
		require.NotEmpty(t, names, "a query of no fedhistory metric: %s", q)
		var known []string
		for _, name := range names {
			f := family(name)
			require.NotNil(t, f, "the dashboard queries %s, which the adapter does not export: %s", name, q)
			used[f.GetName()] = true
			known = append(known, labels(f)...)
		}
		for _, clause := range byClause.FindAllStringSubmatch(q, -1) {
			for label := range strings.SplitSeq(clause[1], ",") {
				label = strings.TrimSpace(label)
				require.True(t, slices.Contains(known, label), "the query groups by %q, a label of none of its metrics: %s", label, q)
			}
		}
	}
	for name := range byName {
		if strings.HasPrefix(name, "fedhistory_") {
			require.True(t, used[name], "no panel shows %s", name)
		}
	}
}
