package buildsrc

import (
	"archive/tar"
	"context"
	"reflect"
	"slices"
	"strings"
	"testing"
)

const threeServices = `
version: "2.4"
x-common: &common
  restart: always
services:
  api:
    <<: *common
    build:
      context: ./api
      dockerfile: build/Dockerfile.prod
      args:
        VERSION: ${VERSION:-1.2.3}
        EMPTY: ${UNSET}
      target: runtime
    environment:
      - MODE=production
      - EMPTY=
      - FROM_HOST
    labels:
      io.balena.features.dbus: "1"
    ports:
      - "8080:80/tcp"
      - 9000
    depends_on:
      - db
    cap_add: [NET_ADMIN]
  web:
    build: web
    image: registry.example.com/web:dev
    environment:
      PORT: 3000
      DEBUG: false
    labels: ["a=b", "c"]
    depends_on:
      api:
        condition: service_started
    privileged: ${PRIV:-true}
    volumes:
      - data:/var/lib/web:ro
      - /tmp/cache
  db:
    image: redis:7-alpine
    restart: "no"
volumes:
  data:
`

func validProject(t *testing.T) []byte {
	return tarBytes(t,
		dir("./"),
		file("./docker-compose.yml", threeServices),
		dir("./api"),
		dir("./api/build"),
		file("./api/build/Dockerfile.prod", "FROM golang AS build\nRUN go build\nFROM alpine AS runtime\nCOPY --from=build /out /app\n"),
		file("./web/Dockerfile", "FROM nginx\nCOPY . /usr/share/nginx/html\n"),
	)
}

func TestScanValidProject(t *testing.T) {
	for _, tc := range []struct {
		name string
		data func(*testing.T) []byte
	}{
		{"plain", validProject},
		{"gzip", func(t *testing.T) []byte { return gzipped(t, validProject(t)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := Scan(context.Background(), writeTemp(t, tc.data(t)), Options{})
			if err != nil {
				t.Fatal(err)
			}
			want := &Project{
				ComposeFile: "docker-compose.yml",
				Services: []Service{
					{
						Name: "api",
						Build: &Build{
							Context:    "api",
							Dockerfile: "build/Dockerfile.prod",
							Args:       map[string]string{"VERSION": "1.2.3", "EMPTY": ""},
							Target:     "runtime",
							NeedsRun:   true,
						},
						Environment: map[string]string{"MODE": "production", "EMPTY": ""},
						Labels:      map[string]string{"io.balena.features.dbus": "1"},
						Ports:       []string{"8080:80/tcp", "9000"},
						Restart:     "always",
						CapAdd:      []string{"NET_ADMIN"},
						DependsOn:   []string{"db"},
					},
					{
						Name:      "db",
						Image:     "redis:7-alpine",
						Restart:   "no",
						DependsOn: nil,
					},
					{
						Name:        "web",
						Build:       &Build{Context: "web", Dockerfile: "Dockerfile"},
						Image:       "registry.example.com/web:dev",
						Environment: map[string]string{"PORT": "3000", "DEBUG": "false"},
						Labels:      map[string]string{"a": "b", "c": ""},
						Privileged:  true,
						Volumes:     []string{"data:/var/lib/web:ro", "/tmp/cache"},
						DependsOn:   []string{"api"},
					},
				},
			}
			if !reflect.DeepEqual(p, want) {
				for i := range p.Services {
					t.Logf("got %+v build %+v", p.Services[i], p.Services[i].Build)
				}
				t.Fatal("project differs")
			}
		})
	}
}

func TestScanRootDockerfile(t *testing.T) {
	p, err := Scan(context.Background(), writeTar(t,
		file("Dockerfile", "FROM alpine\nRUN apk add curl\n"),
		file("main.sh", "echo hi"),
	), Options{})
	if err != nil {
		t.Fatal(err)
	}
	want := &Project{Services: []Service{{Name: "main", Build: &Build{Context: ".", Dockerfile: "Dockerfile", NeedsRun: true}}}}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("got %+v", p.Services)
	}
}

func TestScanComposeFileOrder(t *testing.T) {
	p, err := Scan(context.Background(), writeTar(t,
		file("compose.yaml", "services: {b: {image: b}}"),
		file("docker-compose.yaml", "services: {a: {image: a}}"),
		file("Dockerfile", "FROM alpine"),
	), Options{})
	if err != nil {
		t.Fatal(err)
	}
	if p.ComposeFile != "docker-compose.yaml" || p.Services[0].Name != "a" {
		t.Fatalf("got %+v", p)
	}
}

func TestScanErrors(t *testing.T) {
	compose := func(doc string, more ...member) []member {
		return append([]member{file("docker-compose.yml", doc)}, more...)
	}
	df := file("Dockerfile", "FROM alpine\n")
	for _, tc := range []struct {
		name     string
		members  []member
		raw      []byte
		opts     Options
		code     string
		mentions []string
	}{
		{name: "not a tar", raw: []byte(strings.Repeat("hello world\n", 100)), code: CodeSourceInvalid},
		{name: "empty file", raw: []byte{}, code: CodeSourceInvalid},
		{name: "bad gzip", raw: []byte{0x1f, 0x8b, 0, 0, 0}, code: CodeSourceInvalid},
		{name: "truncated", raw: tarBytes(t, file("a", strings.Repeat("x", 2000)))[:1024], code: CodeSourceInvalid},
		{name: "too many entries", members: []member{file("a", ""), file("b", ""), file("c", "")}, opts: Options{MaxEntries: 2}, code: CodeSourceInvalid, mentions: []string{"2 entries"}},
		{name: "duplicate file", members: []member{df, file("Dockerfile", "FROM x")}, code: CodeSourceInvalid, mentions: []string{"Dockerfile"}},

		{name: "absolute path", members: []member{df, file("/etc/passwd", "x")}, code: CodePathEscapes, mentions: []string{"/etc/passwd"}},
		{name: "dotdot path", members: []member{df, file("a/../../evil", "x")}, code: CodePathEscapes, mentions: []string{"a/../../evil"}},
		{name: "absolute symlink", members: []member{df, symlink("etc", "/etc")}, code: CodePathEscapes, mentions: []string{"etc", "/etc"}},
		{name: "relative symlink escape", members: []member{df, dir("a"), symlink("a/up", "../../x")}, code: CodePathEscapes, mentions: []string{"a/up"}},
		{name: "symlink escape through symlink", members: []member{df, symlink("self", "."), symlink("l", "self/../x")}, code: CodePathEscapes, mentions: []string{"l"}},
		{name: "symlink loop", members: []member{df, symlink("a", "b"), symlink("b", "a")}, code: CodePathEscapes, mentions: []string{"too many symlinks"}},
		{name: "member below symlink", members: []member{df, dir("d"), symlink("s", "d"), file("s/x", "")}, code: CodePathEscapes, mentions: []string{"s/x"}},
		{name: "hard link outside", members: []member{df, {name: "h", typ: tar.TypeLink, link: "../etc/passwd"}}, code: CodePathEscapes, mentions: []string{"h", "../etc/passwd"}},
		{name: "hard link forward", members: []member{df, {name: "h", typ: tar.TypeLink, link: "later"}, file("later", "")}, code: CodePathEscapes, mentions: []string{"later"}},
		{name: "device", members: []member{df, {name: "null", typ: tar.TypeChar}}, code: CodePathEscapes, mentions: []string{"null"}},
		{name: "fifo", members: []member{df, {name: "pipe", typ: tar.TypeFifo}}, code: CodePathEscapes, mentions: []string{"pipe"}},

		{name: "no compose", members: []member{file("README", "")}, code: CodeComposeMissing, mentions: []string{"docker-compose.yml"}},
		{name: "compose not at root", members: []member{file("sub/docker-compose.yml", "services: {}")}, code: CodeComposeMissing},
		{name: "compose too big", members: compose("services: {a: {image: a}}"), opts: Options{MaxComposeSize: 10}, code: CodeComposeInvalid, mentions: []string{"larger"}},

		{name: "yaml syntax", members: compose("services: [\n"), code: CodeComposeInvalid, mentions: []string{"docker-compose.yml"}},
		{name: "empty compose", members: compose(""), code: CodeComposeInvalid, mentions: []string{"empty"}},
		{name: "no services", members: compose("version: '3'\n"), code: CodeComposeInvalid, mentions: []string{"services"}},
		{name: "wrong type", members: compose("services:\n  web:\n    image: [a]\n"), code: CodeComposeInvalid, mentions: []string{"services.web.image"}},
		{name: "interpolation required", members: compose("services:\n  web:\n    image: ${IMAGE:?set IMAGE}\n"), code: CodeComposeInvalid, mentions: []string{"services.web.image", "set IMAGE"}},
		{name: "interpolation syntax", members: compose("services:\n  web:\n    image: ${IMAGE\n"), code: CodeComposeInvalid, mentions: []string{"services.web.image"}},
		{name: "unknown dependency", members: compose("services:\n  web:\n    image: a\n    depends_on: [db]\n"), code: CodeComposeInvalid, mentions: []string{"services.web.depends_on", `"db"`}},
		{name: "dependency cycle", members: compose("services:\n  a: {image: a, depends_on: [b]}\n  b: {image: b, depends_on: [c]}\n  c: {image: c, depends_on: [a]}\n"), code: CodeComposeInvalid, mentions: []string{"cycle", "a -> b -> c -> a"}},
		{name: "service name", members: compose("services:\n  Web_App:\n    image: a\n"), code: CodeComposeInvalid, mentions: []string{"services.Web_App"}},
		{name: "bad port", members: compose("services:\n  web:\n    image: a\n    ports: [\"80:99999\", \"1-3:4-5\", \"80/icmp\"]\n"), code: CodeComposeInvalid, mentions: []string{"services.web.ports[0]", "services.web.ports[1]", "services.web.ports[2]"}},
		{name: "bad volume", members: compose("services:\n  web:\n    image: a\n    volumes: [\"data:relative\", \"undefined:/x\", \"data:/x:zz\"]\nvolumes: {data: {}}\n"), code: CodeComposeInvalid, mentions: []string{"services.web.volumes[0]", "services.web.volumes[1]", "services.web.volumes[2]"}},
		{name: "bad restart", members: compose("services:\n  web:\n    image: a\n    restart: sometimes\n"), code: CodeComposeInvalid, mentions: []string{"services.web.restart", "sometimes"}},
		{name: "bad image", members: compose("services:\n  web:\n    image: 'UPPER CASE'\n"), code: CodeComposeInvalid, mentions: []string{"services.web.image"}},
		{name: "bad privileged", members: compose("services:\n  web:\n    image: a\n    privileged: maybe\n"), code: CodeComposeInvalid, mentions: []string{"services.web.privileged"}},

		{name: "unsupported keys", members: compose(`
services:
  web:
    image: a
    network_mode: host
    build:
      context: .
      ssh: [default]
      network: host
    ports:
      - target: 80
    volumes:
      - ./src:/src
    depends_on:
      db:
        condition: service_healthy
  db:
    image: b
    x-ignored: true
configs: {}
networks: {}
volumes:
  data:
    driver: nfs
`, df), code: CodeComposeUnsupported, mentions: []string{
			"services.web.network_mode", "services.web.build.ssh", "services.web.build.network",
			"services.web.ports[0]", "services.web.volumes[0]", "services.web.depends_on.db.condition",
			"configs", "networks", "volumes.data.driver",
		}},
		{name: "remote context", members: compose("services:\n  web:\n    build: https://github.com/x/y.git\n"), code: CodeComposeUnsupported, mentions: []string{"services.web.build.context"}},

		{name: "context escapes", members: compose("services:\n  web:\n    build: ../other\n"), code: CodePathEscapes, mentions: []string{"services.web.build.context"}},
		{name: "dockerfile escapes", members: compose("services:\n  web:\n    build: {context: a, dockerfile: ../../Dockerfile}\n"), code: CodePathEscapes, mentions: []string{"services.web.build.dockerfile"}},

		{name: "no build or image", members: compose("services:\n  web:\n    environment: {A: b}\n  db:\n"), code: CodeServiceInvalid, mentions: []string{"services.web", "services.db"}},

		{name: "context missing", members: compose("services:\n  web:\n    build: web\n", df), code: CodeDockerfileMissing, mentions: []string{"services.web.build.context", `"web"`}},
		{name: "dockerfile missing", members: compose("services:\n  web:\n    build: {context: web, dockerfile: Dockerfile.dev}\n", file("web/Dockerfile", "FROM a")), code: CodeDockerfileMissing, mentions: []string{"services.web.build.dockerfile", "web/Dockerfile.dev"}},
		{name: "dockerfile is a directory", members: compose("services:\n  web:\n    build: .\n", dir("Dockerfile")), code: CodeDockerfileMissing, mentions: []string{"Dockerfile"}},

		{name: "dockerfile without FROM", members: compose("services:\n  web:\n    build: .\n", file("Dockerfile", "RUN echo\n")), code: CodeDockerfileInvalid, mentions: []string{"Dockerfile", "web"}},
		{name: "dockerfile empty", members: compose("services:\n  web:\n    build: .\n", file("Dockerfile", "# nothing\n")), code: CodeDockerfileInvalid, mentions: []string{"Dockerfile"}},
		{name: "dockerfile bad instruction", members: compose("services:\n  web:\n    build: .\n", file("Dockerfile", "FROM a\nFROBNICATE x\n")), code: CodeDockerfileInvalid, mentions: []string{"Dockerfile"}},
		{name: "unknown target", members: compose("services:\n  web:\n    build: {context: ., target: prod}\n", file("Dockerfile", "FROM a AS dev\n")), code: CodeDockerfileInvalid, mentions: []string{"Dockerfile", `"prod"`}},
		{name: "root dockerfile invalid", members: []member{file("Dockerfile", "ENV A=b\n")}, code: CodeDockerfileInvalid, mentions: []string{"Dockerfile"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.raw
			if data == nil {
				data = tarBytes(t, tc.members...)
			}
			_, err := Scan(context.Background(), writeTemp(t, data), tc.opts)
			wantError(t, err, tc.code, tc.mentions...)
		})
	}
}

func TestScanUnsupportedListsEveryKey(t *testing.T) {
	_, err := Scan(context.Background(), writeTar(t, file("compose.yml", `
services:
  web:
    image: a
    healthcheck: {}
    network_mode: host
    secrets: [s]
secrets: {}
`)), Options{})
	got := fields(err)
	want := []string{"secrets", "services.web.healthcheck", "services.web.network_mode", "services.web.secrets"}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("fields %v, want %v", got, want)
	}
}

func TestNeedsRun(t *testing.T) {
	for _, tc := range []struct {
		name       string
		dockerfile string
		target     string
		args       map[string]string
		want       bool
	}{
		{name: "copy only", dockerfile: "FROM alpine\nENV A=b\nLABEL x=y\nCOPY . /app\nADD a.tar /\nWORKDIR /app\nCMD [\"/app/run\"]\n"},
		{name: "run", dockerfile: "FROM alpine\nRUN apk add curl\n", want: true},
		{name: "run with continuation", dockerfile: "FROM alpine\nRUN apk add \\\n  curl\n", want: true},
		{name: "heredoc", dockerfile: "# syntax=docker/dockerfile:1\nFROM alpine\nRUN <<EOF\necho hi\nEOF\n", want: true},
		{
			name:       "cross compile on build platform",
			dockerfile: "FROM --platform=$BUILDPLATFORM golang AS b\nRUN go build -o /out\nFROM scratch\nCOPY --from=b /out /out\n",
		},
		{
			name:       "braced build platform and inherited stage",
			dockerfile: "FROM --platform=${BUILDPLATFORM} golang AS base\nFROM base AS b\nRUN go build\nFROM scratch\nCOPY --from=b /out /out\n",
		},
		{
			name:       "copy from a foreign stage that runs",
			dockerfile: "FROM golang AS b\nRUN go build\nFROM scratch\nCOPY --from=b /out /out\n",
			want:       true,
		},
		{
			name:       "copy from stage index",
			dockerfile: "FROM golang\nRUN go build\nFROM scratch\nCOPY --from=0 /out /out\n",
			want:       true,
		},
		{
			name:       "from earlier stage",
			dockerfile: "FROM alpine AS base\nRUN apk add curl\nFROM base\nCOPY . /app\n",
			want:       true,
		},
		{
			name:       "run in an unused stage",
			dockerfile: "FROM alpine AS test\nRUN make test\nFROM alpine AS prod\nCOPY . /app\n",
			target:     "prod",
		},
		{
			name:       "unused stage without target",
			dockerfile: "FROM alpine AS test\nRUN make test\nFROM alpine\nCOPY . /app\n",
		},
		{
			name:       "target runs",
			dockerfile: "FROM alpine AS test\nRUN make test\nFROM alpine AS prod\nCOPY . /app\n",
			target:     "TEST",
			want:       true,
		},
		{
			name:       "run mount from foreign stage",
			dockerfile: "FROM alpine AS tools\nRUN apk add jq\nFROM --platform=$BUILDPLATFORM alpine\nRUN --mount=type=bind,from=tools,target=/t ls /t\n",
			want:       true,
		},
		{
			name:       "stage named by build arg",
			dockerfile: "ARG BASE=none\nFROM alpine AS builder\nRUN make\nFROM ${BASE}\nCOPY . /\n",
			args:       map[string]string{"BASE": "builder"},
			want:       true,
		},
		{
			name:       "fixed foreign platform",
			dockerfile: "FROM --platform=linux/amd64 alpine\nRUN echo\n",
			want:       true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := needsRun([]byte(tc.dockerfile), tc.target, tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("needsRun = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestScanCanceled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Scan(ctx, writeTar(t, file("Dockerfile", "FROM a")), Options{}); err != context.Canceled {
		t.Fatalf("got %v", err)
	}
}
