// Package deps pins module dependencies while packages are being written.
package deps

import (
	_ "github.com/coder/websocket"
	_ "github.com/coder/websocket/wsjson"
	_ "github.com/docker/docker/api/types/container"
	_ "github.com/docker/docker/api/types/image"
	_ "github.com/docker/docker/client"
	_ "github.com/docker/docker/errdefs"
	_ "github.com/docker/docker/pkg/stdcopy"
	_ "github.com/go-git/go-git/v5/plumbing/format/gitignore"
	_ "github.com/oklog/ulid/v2"
	_ "github.com/spf13/pflag"
	_ "gorm.io/driver/sqlite"
	_ "gorm.io/gorm"
	_ "gorm.io/gorm/logger"
	_ "gorm.io/gorm/clause"
)
