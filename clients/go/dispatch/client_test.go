package dispatch

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "dispatch/clients/go/dispatchv1"
)

// The Go client against a live stack (tools/with-stack.sh: Redis, NATS, dispatch and two Rust
// workers on queue "default"); STACK_GRPC is its gRPC address.
func connect(t *testing.T) *Client {
	target := os.Getenv("STACK_GRPC")
	if target == "" {
		t.Fatal("STACK_GRPC is not set: run through tools/test-clients.sh")
	}
	c, err := Connect(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestCreateGetWaitWatch(t *testing.T) {
	c, ctx := connect(t), context.Background()
	job, err := c.Create(ctx, "default", "sleep", map[string]interface{}{"durationMs": 50, "from": "go"})
	if err != nil {
		t.Fatal(err)
	}
	if job.GetState() != pb.JobState_JOB_STATE_QUEUED {
		t.Fatalf("state %v", job.GetState())
	}
	got, err := c.Get(ctx, job.GetId())
	if err != nil || got.GetPayload().GetStructValue().AsMap()["from"] != "go" {
		t.Fatalf("get: %v %v", got, err)
	}
	done, err := c.Wait(ctx, job.GetId(), 20*time.Second)
	if err != nil || done.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("wait: %v %v", done, err)
	}
	if done.GetResult().GetStructValue().AsMap()["sleptMs"] != float64(50) {
		t.Fatalf("result %v", done.GetResult())
	}
	var states []pb.JobState
	if err := c.Watch(ctx, job.GetId(), func(e *pb.JobEvent) { states = append(states, e.GetState()) }); err != nil {
		t.Fatal(err)
	}
	want := []pb.JobState{pb.JobState_JOB_STATE_QUEUED, pb.JobState_JOB_STATE_RUNNING, pb.JobState_JOB_STATE_SUCCEEDED}
	if len(states) != len(want) || states[0] != want[0] || states[1] != want[1] || states[2] != want[2] {
		t.Fatalf("events %v", states)
	}
}

func TestCancelRetry(t *testing.T) {
	c, ctx := connect(t), context.Background()
	job, err := c.Create(ctx, "default", "noop", nil, Delay(time.Minute), Labels(map[string]string{"team": "go"}))
	if err != nil || job.GetState() != pb.JobState_JOB_STATE_SCHEDULED {
		t.Fatalf("create: %v %v", job, err)
	}
	if j, err := c.Cancel(ctx, job.GetId(), "not needed"); err != nil || j.GetState() != pb.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("cancel: %v %v", j, err)
	}
	if _, err := c.Retry(ctx, job.GetId()); err != nil {
		t.Fatal(err)
	}
	if j, err := c.Wait(ctx, job.GetId(), 20*time.Second); err != nil || j.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("after retry: %v %v", j, err)
	}
}

func TestErrors(t *testing.T) {
	c, ctx := connect(t), context.Background()
	if _, err := c.Get(ctx, "0190a000-0000-7000-8000-000000000000"); status.Code(err) != codes.NotFound {
		t.Fatalf("want NotFound, got %v", err)
	}
	_, err := c.Create(ctx, "", "", nil)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("want InvalidArgument, got %v", err)
	}
	fields := map[string]bool{}
	for _, v := range FieldViolations(err) {
		fields[v.Field] = true
	}
	if !fields["queue"] || !fields["type"] {
		t.Fatalf("violations %v", FieldViolations(err))
	}
	idle, err := c.Create(ctx, "go-nobody", "noop", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(ctx, idle.GetId(), 300*time.Millisecond); status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("want DeadlineExceeded, got %v", err)
	}
}

func TestTokenAndCA(t *testing.T) {
	target, ca := os.Getenv("STACK_TLS_GRPC"), os.Getenv("STACK_CA")
	token, viewerToken := os.Getenv("STACK_TOKEN"), os.Getenv("STACK_VIEWER_TOKEN")
	if target == "" || ca == "" || token == "" || viewerToken == "" {
		t.Fatal("STACK_TLS_GRPC, STACK_CA, STACK_TOKEN, STACK_VIEWER_TOKEN: run through tools/test-clients.sh")
	}
	ctx := context.Background()
	producer, err := ConnectWith(target, Options{Token: token, CACertFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer producer.Close()
	job, err := producer.Create(ctx, "default", "noop", map[string]interface{}{"from": "go over TLS"})
	if err != nil {
		t.Fatal(err)
	}
	done, err := producer.Wait(ctx, job.GetId(), 20*time.Second)
	if err != nil || done.GetState() != pb.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("wait: %v %v", done, err)
	}
	anonymous, err := ConnectWith(target, Options{CACertFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer anonymous.Close()
	if _, err := anonymous.Get(ctx, job.GetId()); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("want Unauthenticated, got %v", err)
	}
	viewer, err := ConnectWith(target, Options{Token: viewerToken, CACertFile: ca})
	if err != nil {
		t.Fatal(err)
	}
	defer viewer.Close()
	if got, err := viewer.Get(ctx, job.GetId()); err != nil || got.GetId() != job.GetId() {
		t.Fatalf("viewer get: %v %v", got, err)
	}
	if _, err := viewer.Create(ctx, "default", "noop", nil); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("want PermissionDenied, got %v", err)
	}
}
